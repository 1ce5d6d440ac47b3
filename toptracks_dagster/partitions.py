"""Country (Spotify market) partitions, from TOPTRACKS_COUNTRIES (default US,CA)."""

from dagster import StaticPartitionsDefinition

from toptracks_dagster.config import countries

country_partitions = StaticPartitionsDefinition(countries())
