"""The IAM policy documents agree with the code and the instance config they serve, and grant nothing broad."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.production.aws import EXECUTION_ROLE_POLICY, REPO, RUN_ROLE_POLICY, policy_actions, render_policy
from toptracks_dagster.dynamodb.table import GSI_NAME
from toptracks_dagster.raw_storage.s3 import S3RawStorage

LAUNCHER_ROLE_POLICY = REPO / "deploy" / "iam" / "launcher-role-policy.json"
POLICIES = [RUN_ROLE_POLICY, EXECUTION_ROLE_POLICY, LAUNCHER_ROLE_POLICY]
# Actions AWS does not scope to a resource: "*" is the only valid Resource for them.
UNSCOPED_ACTIONS = {"ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"}


@pytest.fixture(scope="module")
def instance_config() -> dict:
    return yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())


def statements(path) -> dict[str, dict]:
    return {s["Sid"]: s for s in json.loads(path.read_text())["Statement"]}


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_only_allow_statements_with_named_actions_and_resources(path):
    for sid, statement in statements(path).items():
        assert statement["Effect"] == "Allow"
        assert all("*" not in action for action in statement["Action"]), sid
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if set(statement["Action"]) <= UNSCOPED_ACTIONS:
            assert resources == ["*"], sid
        else:
            assert "*" not in resources, sid


def test_run_role_dynamodb_is_the_one_table_and_its_index():
    run = statements(RUN_ROLE_POLICY)
    table = "arn:aws:dynamodb:${AWS_REGION}:${AWS_ACCOUNT_ID}:table/${TOPTRACKS_TABLE}"
    assert run["TopTracksTable"]["Resource"] == table
    assert run["TopTracksPopularityIndex"]["Resource"] == f"{table}/index/{GSI_NAME}"
    dynamodb = {
        action
        for _, action in policy_actions(json.loads(RUN_ROLE_POLICY.read_text()))
        if action.startswith("dynamodb:")
    }
    # No table management and no scans: the table comes from the template; the load writes each artist in one
    # transaction, which AWS authorizes as the PutItem and DeleteItem it holds.
    assert dynamodb == {"dynamodb:DeleteItem", "dynamodb:DescribeTable", "dynamodb:PutItem", "dynamodb:Query"}


def test_run_role_s3_is_the_raw_prefix_the_code_writes_and_the_compute_log_prefix(instance_config):
    run = statements(RUN_ROLE_POLICY)
    prefix = S3RawStorage.model_fields["prefix"].default.strip("/")
    assert run["RawObjects"]["Resource"] == f"arn:aws:s3:::${{TOPTRACKS_RAW_S3_BUCKET}}/{prefix}/*"
    assert run["RawPrefixListing"]["Condition"]["StringLike"]["s3:prefix"] == [f"{prefix}/*"]
    log_prefix = instance_config["compute_logs"]["config"]["prefix"]
    assert run["ComputeLogUploads"]["Resource"] == f"arn:aws:s3:::${{DAGSTER_COMPUTE_LOGS_BUCKET}}/{log_prefix}/*"
    assert statements(LAUNCHER_ROLE_POLICY)["ComputeLogs"]["Resource"] == run["ComputeLogUploads"]["Resource"]


def test_execution_role_reads_exactly_the_secrets_the_launcher_references(instance_config):
    referenced = {s["name"] for s in instance_config["run_launcher"]["config"]["secrets"]}
    assert referenced == {"SPOTIFY_CLIENT_SECRET", "MYSQL_PASSWORD", "DAGSTER_PG_PASSWORD"}
    (statement,) = statements(EXECUTION_ROLE_POLICY).values()
    assert statement["Action"] == ["secretsmanager:GetSecretValue"]
    assert len(statement["Resource"]) == len(referenced)
    # Secrets Manager appends "-" and six random characters to a secret's name in its ARN.
    assert all(arn.endswith("-??????") for arn in statement["Resource"])


def test_launcher_passes_only_the_two_run_roles_and_starts_only_its_own_task_definitions(instance_config):
    launcher = statements(LAUNCHER_ROLE_POLICY)
    assert launcher["PassRunRoles"]["Resource"] == ["${TOPTRACKS_RUN_TASK_ROLE_ARN}", "${TOPTRACKS_EXECUTION_ROLE_ARN}"]
    task_definition = instance_config["run_launcher"]["config"]["task_definition"]
    assert task_definition["task_role_arn"] == {"env": "TOPTRACKS_RUN_TASK_ROLE_ARN"}
    assert task_definition["execution_role_arn"] == {"env": "TOPTRACKS_EXECUTION_ROLE_ARN"}
    prefix = instance_config["run_launcher"]["config"]["task_definition_prefix"]
    assert launcher["StartRunTasks"]["Resource"].endswith(f":task-definition/{prefix}_*")


@pytest.mark.parametrize("path", POLICIES, ids=[p.name for p in POLICIES])
def test_every_placeholder_is_documented(path):
    import re

    guide = (REPO / "docs" / "production.md").read_text()
    for name in set(re.findall(r"\$\{(\w+)\}", path.read_text())):
        assert f"`{name}`" in guide, f"{name} ({path.name}) is not explained in docs/production.md"
    # And the documents render to valid JSON once filled in.
    values = {name: "x" for name in re.findall(r"\$\{(\w+)\}", path.read_text())}
    assert render_policy(path, **values)["Version"] == "2012-10-17"
