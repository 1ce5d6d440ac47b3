"""toptracks-dagster: artists' Spotify top tracks, per market, from MySQL/RDS into DynamoDB."""
