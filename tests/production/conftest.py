"""Fixtures for the production recipe tests: an emulated AWS account (moto server mode)."""

from __future__ import annotations

import pytest

from tests.production.aws import EmulatedAws


@pytest.fixture(scope="session")
def emulated_aws():
    aws = EmulatedAws()
    yield aws
    aws.stop()
