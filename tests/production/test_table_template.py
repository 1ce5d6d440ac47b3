"""The table as code: deploy/cloudformation/top_tracks.yaml says what toptracks_dagster/dynamodb/table.py says,
passes cfn-lint, and creates a table that the pipeline accepts as its own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.production.aws import REGION, TABLE_TEMPLATE
from toptracks_dagster import config
from toptracks_dagster.dynamodb.table import (
    ATTRIBUTE_TYPES,
    GSI_KEY_SCHEMA,
    GSI_NAME,
    GSI_PROJECTION,
    KEY_SCHEMA,
    ensure_table,
)


class _CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !GetAtt, ...) read as {"Ref": ...} / {"Fn::GetAtt": ...}."""


def _intrinsic(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        return {name: value.split(".", 1) if suffix == "GetAtt" else value}
    if isinstance(node, yaml.SequenceNode):
        return {name: loader.construct_sequence(node)}
    return {name: loader.construct_mapping(node)}


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TABLE_TEMPLATE.read_text(), Loader=_CloudFormationLoader)


@pytest.fixture(scope="module")
def table(template) -> dict:
    tables = [r for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    assert len(tables) == 1
    return tables[0]["Properties"]


def test_keys_and_attribute_types_match_the_code(table):
    assert table["KeySchema"] == KEY_SCHEMA
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == ATTRIBUTE_TYPES
    assert len(table["AttributeDefinitions"]) == len(ATTRIBUTE_TYPES)  # no duplicate definitions


def test_the_popularity_index_matches_the_code(table):
    (index,) = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == GSI_NAME
    assert index["KeySchema"] == GSI_KEY_SCHEMA
    assert index["Projection"]["ProjectionType"] == GSI_PROJECTION["ProjectionType"]
    assert sorted(index["Projection"]["NonKeyAttributes"]) == sorted(GSI_PROJECTION["NonKeyAttributes"])


def test_on_demand_with_point_in_time_recovery_and_the_name_as_a_parameter(template, table):
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert "ProvisionedThroughput" not in table
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["TableName"] == {"Ref": "TableName"}
    assert template["Parameters"]["TableName"]["Default"] == config.DEFAULT_TABLE
    resource = next(r for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table")
    assert resource["DeletionPolicy"] == "Retain" and resource["UpdateReplacePolicy"] == "Retain"


def test_the_template_path_named_by_the_config_exists():
    # TOPTRACKS_CREATE_TABLE=false names this template in its error; it must point at the real file.
    assert (TABLE_TEMPLATE.parents[2] / config.TABLE_TEMPLATE) == TABLE_TEMPLATE


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    """The cfn-lint command of this environment (the `test` extra pins it), as CI runs it."""
    command = Path(sys.executable).with_name("cfn-lint")
    assert command.exists(), f"cfn-lint is not installed next to {sys.executable}: pip install -e '.[test]'"
    return subprocess.run(
        [str(command), "--regions", REGION, "--", str(path)], capture_output=True, text=True, timeout=120
    )


def test_cfn_lint_passes():
    result = cfn_lint(TABLE_TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_is_not_a_no_op(tmp_path):
    # The same linter flags a broken copy (a GSI key attribute without a definition), so the test above can fail.
    broken = TABLE_TEMPLATE.read_text().replace(
        "AttributeName: popularity\n          AttributeType: N", "AttributeName: plays\n          AttributeType: N"
    )
    assert broken != TABLE_TEMPLATE.read_text()
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    result = cfn_lint(path)
    assert result.returncode != 0 and "plays" in result.stdout, result.stdout + result.stderr


def test_a_table_created_from_the_template_is_accepted_by_the_pipeline(emulated_aws):
    name = f"top_tracks_{uuid.uuid4().hex[:8]}"
    outputs = emulated_aws.create_table_stack(name)
    client = emulated_aws.client("dynamodb")
    # ensure_table compares the live key schema, GSI and projection with the code's and would raise on a mismatch.
    assert ensure_table(client, name, emulated_aws.endpoint) == "exists"
    description = client.describe_table(TableName=name)["Table"]
    assert outputs["TableArn"] == description["TableArn"]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # (moto's CloudFormation does not apply PointInTimeRecoverySpecification; the template test above checks it.)


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("true", True), ("false", False), ("0", False)])
def test_create_table_setting(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("TOPTRACKS_CREATE_TABLE", raising=False)
    else:
        monkeypatch.setenv("TOPTRACKS_CREATE_TABLE", value)
    assert config.create_table() is expected


def test_create_table_setting_rejects_other_values(monkeypatch):
    monkeypatch.setenv("TOPTRACKS_CREATE_TABLE", "sometimes")
    with pytest.raises(config.ConfigError, match="TOPTRACKS_CREATE_TABLE"):
        config.create_table()
