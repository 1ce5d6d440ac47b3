"""Least privilege, proven: a partition runs end to end with only deploy/iam/run-role-policy.json, and fails with
AccessDenied when any one of the actions it exercises is removed.

The run is the real thing: `dagster.materialize` of the three assets and their checks with the `prod`
resources, MariaDB for the artist ids, the Spotify emulator, raw storage on S3 and the table on DynamoDB, both
in moto's server mode with IAM enforcement on, signed with the keys of an IAM user that has nothing but the
rendered policy. The table comes from the CloudFormation template, so the run never creates one.
"""

from __future__ import annotations

import uuid

import pytest
from dagster import DagsterEventType, RetryPolicy, materialize

from tests.conftest import TEST_CLIENT_ID
from tests.helpers import ALL_ASSETS, expected_keys, scan_table
from tests.production.aws import (
    ACCOUNT_ID,
    REGION,
    RUN_ROLE_POLICY,
    policy_actions,
    render_policy,
    without_action,
)
from toptracks_dagster.deployments import build_resources
from toptracks_dagster.dynamodb.table import GSI_NAME
from toptracks_dagster.raw_storage.s3 import S3RawStorage

CHECKS: list = []  # every check of the refresh runs inside its asset's step
MARKET = "US"

# Policy actions a run needs that this emulation cannot exercise, and why each stays in the policy.
NOT_EXERCISED_HERE = {
    # Real S3 answers 403 instead of 404 for a missing key unless the caller may list the bucket; the first load
    # of a market looks for a raw partition that does not exist yet and needs that 404. moto always answers 404.
    ("RawPrefixListing", "s3:ListBucket"),
    # Only sent when a multipart upload (raw objects above 8 MB) fails, to remove its parts.
    ("RawObjects", "s3:AbortMultipartUpload"),
    # Compute logs are uploaded by the run worker's instance (S3ComputeLogManager), not by the assets.
    ("ComputeLogUploads", "s3:PutObject"),
    # RDS IAM authentication is checked by RDS at connect time (MYSQL_IAM_AUTH=true); MariaDB here uses a password.
    ("ArtistsDatabaseIamAuth", "rds-db:connect"),
    # The run's loads read each artist with a Query on the table; the one run here is a first load into an empty
    # market, which needs no read before writing, and its read back is exercised in the DynamoDB tests.
    ("TopTracksTable", "dynamodb:Query"),
}


@pytest.fixture
def no_retry_delays(monkeypatch):
    """The assets' retry policies stay in force, without their 10-100 s waits between attempts
    (`materialize` runs in process and ignores executor config such as `retries: disabled`)."""
    monkeypatch.setattr(RetryPolicy, "calculate_delay", lambda self, attempt_num: 0)


def rendered_policy(table: str, bucket: str) -> dict:
    return render_policy(
        RUN_ROLE_POLICY,
        AWS_REGION=REGION,
        AWS_ACCOUNT_ID=ACCOUNT_ID,
        TOPTRACKS_TABLE=table,
        TOPTRACKS_RAW_S3_BUCKET=bucket,
        DAGSTER_COMPUTE_LOGS_BUCKET=bucket,
        RDS_DB_RESOURCE_ID="db-EXAMPLE",
        MYSQL_USER="toptracks",
    )


@pytest.fixture
def account(emulated_aws, monkeypatch, artists_table, emulator, client_secret, some_artist_ids, no_retry_delays):
    """A fresh table (from the template) and raw bucket; the config contract pointing at them, MariaDB's artists
    table and the Spotify emulator."""
    table = f"top_tracks_{uuid.uuid4().hex[:8]}"
    bucket = f"toptracks-raw-{uuid.uuid4().hex[:8]}"
    outputs = emulated_aws.create_table_stack(table)
    assert outputs["TableName"] == table
    emulated_aws.create_bucket(bucket)
    artists_table.set_ids(some_artist_ids[:4])
    server = artists_table.server
    for name, value in {
        "DAGSTER_DEPLOYMENT": "prod",
        "MYSQL_HOST": server["host"],
        "MYSQL_PORT": str(server["port"]),
        "MYSQL_USER": server["user"],
        "MYSQL_PASSWORD": server["password"],
        "MYSQL_DATABASE": artists_table.database,
        "SPOTIFY_CLIENT_ID": TEST_CLIENT_ID,
        "SPOTIFY_CLIENT_SECRET": client_secret,
        "SPOTIFY_API_BASE_URL": emulator.base_url,
        "SPOTIFY_TOKEN_URL": emulator.token_url,
        "SPOTIFY_REQUESTS_PER_SECOND": "0",
        "TOPTRACKS_COUNTRIES": "US,CA",
        "DYNAMODB_ENDPOINT_URL": emulated_aws.endpoint,
        "AWS_ENDPOINT_URL_S3": emulated_aws.endpoint,  # botocore's per-service endpoint variable
        "TOPTRACKS_TABLE": table,
        "TOPTRACKS_RAW_S3_BUCKET": bucket,
        "TOPTRACKS_CREATE_TABLE": "false",
        "TOPTRACKS_CHECK_SAMPLE_SIZE": "0",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("TOPTRACKS_RAW_DIR", "MYSQL_IAM_AUTH", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return {"table": table, "bucket": bucket, "artists": some_artist_ids[:4]}


def run_with_policy(emulated_aws, monkeypatch, policy: dict, checks=CHECKS):
    keys = emulated_aws.user_with_policy(policy)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
    resources = build_resources("prod")
    assert isinstance(resources["raw_storage"], S3RawStorage)
    emulated_aws.requests.clear()
    with emulated_aws.enforcing():
        result = materialize([*ALL_ASSETS, *checks], partition_key=MARKET, resources=resources, raise_on_error=False)
    return result, list(emulated_aws.requests)


def failure_text(result) -> str:
    """Every step failure and every failed check's description and metadata, as one text."""
    parts = []
    for event in result.all_events:
        if event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.event_specific_data.error
            while error is not None:
                parts.append(error.message)
                error = error.cause
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed:
            parts.append(str(evaluation.description))
            parts.extend(str(value.value) for value in evaluation.metadata.values())
    return "\n".join(parts)


def test_a_partition_runs_with_only_the_policy_and_uses_every_action_in_it(
    emulated_aws, monkeypatch, account, emulator
):
    policy = rendered_policy(account["table"], account["bucket"])
    result, requests = run_with_policy(emulated_aws, monkeypatch, policy)

    assert result.success, failure_text(result)
    failed_checks = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed_checks == []
    # The table holds the market's top lists: the run really wrote through the policy.
    items = scan_table(emulated_aws.client("dynamodb"), account["table"])
    assert set(items) == set(expected_keys(emulator.catalog, account["artists"], [MARKET]))
    # Every request the run made was authorized by moto, and nothing was denied along the way.
    used = {action for action, _ in requests}
    assert used, "IAM enforcement recorded no request: the run did not go through the emulated account"
    table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{account['table']}"
    assert {resource for action, resource in requests if action.startswith("dynamodb:")} == {
        table_arn,
        f"{table_arn}/index/{GSI_NAME}",
    }
    assert all(
        resource.startswith(f"arn:aws:s3:::{account['bucket']}/toptracks/raw/")
        for action, resource in requests
        if action.startswith("s3:")
    )
    # Exactly: what the policy allows is what the run used, apart from the documented exceptions.
    allowed = {action for _, action in policy_actions(policy)}
    not_exercised = {action for _, action in NOT_EXERCISED_HERE}
    assert used == allowed - (not_exercised - used), (
        f"used but not in the policy: {sorted(used - allowed)}; in the policy but unused: "
        f"{sorted(allowed - used - not_exercised)}"
    )
    assert "dynamodb:CreateTable" not in allowed and "dynamodb:CreateTable" not in used


EXERCISED = [
    (sid, action)
    for sid, action in policy_actions(rendered_policy("t", "b"))
    if (sid, action) not in NOT_EXERCISED_HERE
]


@pytest.mark.parametrize(("sid", "action"), EXERCISED, ids=[f"{sid}-{action}" for sid, action in EXERCISED])
def test_removing_any_exercised_action_makes_the_run_fail_with_access_denied(
    emulated_aws, monkeypatch, account, sid, action
):
    policy = without_action(rendered_policy(account["table"], account["bucket"]), sid, action)
    # One attempt per step: a denied action fails every retry the same way, and the retries only add time.
    monkeypatch.setattr(RetryPolicy, "max_retries", property(lambda self: 0))
    result, requests = run_with_policy(emulated_aws, monkeypatch, policy)
    assert action in {a for a, _ in requests}, f"{action} was never requested"

    text = failure_text(result)
    assert not result.success or any(not e.passed for e in result.get_asset_check_evaluations())
    if action.startswith("dynamodb:"):
        # The error names the denied action: "AccessDenied ... is not authorized to perform: dynamodb:Query"
        assert "AccessDenied" in text and f"not authorized to perform: {action}" in text, text[-2000:]
    else:
        assert S3_DENIALS[action] in text, text[-2000:]


# S3 names the refused operation, not the action; s3:GetObject is first needed by a HeadObject, whose 403 has no body.
S3_DENIALS = {
    "s3:PutObject": "(AccessDenied) when calling the PutObject operation",
    "s3:GetObject": "(403) when calling the HeadObject operation: Forbidden",
}


def test_the_exceptions_are_all_in_the_policy():
    # A stale exception would hide an action that was removed from the policy.
    assert NOT_EXERCISED_HERE <= set(policy_actions(rendered_policy("t", "b")))


def test_prod_resources_build_s3_raw_storage(monkeypatch):
    for name, value in {
        "DAGSTER_DEPLOYMENT": "prod",
        "MYSQL_HOST": "db.example.internal",
        "MYSQL_USER": "etl",
        "TOPTRACKS_RAW_S3_BUCKET": "toptracks-raw",
    }.items():
        monkeypatch.setenv(name, value)
    assert isinstance(build_resources("prod")["raw_storage"], S3RawStorage)


def test_without_the_table_a_production_run_stops_with_an_error_naming_the_template(emulated_aws, monkeypatch, account):
    # TOPTRACKS_CREATE_TABLE=false (set by `account`) and a table name no stack created.
    missing = f"top_tracks_missing_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("TOPTRACKS_TABLE", missing)
    result, requests = run_with_policy(
        emulated_aws, monkeypatch, rendered_policy(missing, account["bucket"]), checks=[]
    )
    assert not result.success
    assert "dynamodb:CreateTable" not in {action for action, _ in requests}
    assert "deploy/cloudformation/top_tracks.yaml" in failure_text(result)
