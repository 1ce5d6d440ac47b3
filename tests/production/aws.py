"""An emulated AWS account for the production tests: moto's server mode, with IAM enforcement switched on and off.

moto checks a signed request's action against the caller's IAM policies once enforcement is on (its
`/moto-api/reset-auth` endpoint, the server-mode side of `moto.core.set_initial_no_auth_action_count`).
For S3 it checks the object or bucket ARN too; for DynamoDB it evaluates every request against resource "*",
which no table-scoped statement matches. `dynamodb_resource_arn` gives moto's DynamoDB handler the resource
AWS itself evaluates (the table, or the index for a Query on one), so the policy is tested with its real
resource ARNs rather than widened to "*".
"""

from __future__ import annotations

import json
import logging
import string
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3
import requests

REPO = Path(__file__).resolve().parents[2]
RUN_ROLE_POLICY = REPO / "deploy" / "iam" / "run-role-policy.json"
EXECUTION_ROLE_POLICY = REPO / "deploy" / "iam" / "execution-role-policy.json"
TABLE_TEMPLATE = REPO / "deploy" / "cloudformation" / "top_tracks.yaml"
ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "ap-northeast-2"
# moto accepts any keys while IAM enforcement is off; these set up the account and read it back afterwards.
ADMIN_KEYS = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}


def render_policy(path: Path, **values: str) -> dict:
    """The policy document with its ${NAME} placeholders filled in (what `envsubst` does in the docs)."""
    return json.loads(string.Template(path.read_text()).substitute(values))


def policy_actions(policy: dict) -> list[tuple[str, str]]:
    """(statement Sid, action) for every allowed action of the policy."""
    return [(statement["Sid"], action) for statement in policy["Statement"] for action in _as_list(statement["Action"])]


def without_action(policy: dict, sid: str, action: str) -> dict:
    """The policy with one action removed from one statement (a statement left empty is dropped)."""
    statements = []
    for statement in policy["Statement"]:
        statement = dict(statement)
        if statement["Sid"] == sid:
            statement["Action"] = [a for a in _as_list(statement["Action"]) if a != action]
        if statement["Action"]:
            statements.append(statement)
    return {**policy, "Statement": statements}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def dynamodb_resource_arn(handler) -> str:
    """The ARN AWS authorizes a DynamoDB request against: the table, or table/<t>/index/<i> for an index."""
    body = handler.body or {}
    tables = [body["TableName"]] if body.get("TableName") else list((body.get("RequestItems") or {}).keys())
    for action in body.get("TransactItems") or []:
        tables += [entry["TableName"] for entry in action.values() if entry["TableName"] not in tables]
    if len(tables) != 1:
        return "*"
    arn = f"arn:aws:dynamodb:{handler.region}:{handler.current_account}:table/{tables[0]}"
    return f"{arn}/index/{body['IndexName']}" if body.get("IndexName") else arn


def _record_authorizations(log: list) -> None:
    """Record the (IAM action, resource) of every request moto authorizes, allowed or not."""
    from moto.iam.access_control import IAMRequestBase

    original = getattr(IAMRequestBase.check_action_permitted, "original", IAMRequestBase.check_action_permitted)

    def check_action_permitted(request, resource: str) -> None:
        if request._action == "dynamodb:TransactWriteItems":
            # AWS authorizes a transaction's puts and deletes as PutItem and DeleteItem on their table; moto checks
            # the operation's own name. Both are required here, whichever the transaction holds.
            for action in ("dynamodb:PutItem", "dynamodb:DeleteItem"):
                request._action = action
                try:
                    log.append((action, resource))
                    original(request, resource)
                finally:
                    request._action = "dynamodb:TransactWriteItems"
            return None
        log.append((request._action, resource))
        return original(request, resource)

    check_action_permitted.original = original
    IAMRequestBase.check_action_permitted = check_action_permitted


class EmulatedAws:
    """One moto server for a test session; `enforcing()` turns IAM checks on for a block."""

    def __init__(self):
        from moto.dynamodb.responses import DynamoHandler
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        DynamoHandler._determine_resource = dynamodb_resource_arn  # see the module docstring
        self.requests: list[tuple[str, str]] = []  # (IAM action, resource) of every request checked while enforcing
        _record_authorizations(self.requests)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self._set_no_auth_count("inf")
        self._server.stop()

    def client(self, service: str, **keys):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION, **(keys or ADMIN_KEYS))

    def _set_no_auth_count(self, count: str) -> None:
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(), timeout=10).raise_for_status()

    @contextmanager
    def enforcing(self) -> Iterator[None]:
        """IAM enforcement on: every request must be signed by a known user and be allowed by its policies."""
        self._set_no_auth_count("0")
        try:
            yield
        finally:
            self._set_no_auth_count("inf")

    def user_with_policy(self, policy: dict) -> dict:
        """A new IAM user with only `policy` attached; returns its keys (boto3 keyword names)."""
        iam = self.client("iam")
        name = f"toptracks-run-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="run-role-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    def create_table_stack(self, table_name: str) -> dict:
        """Create the table from the CloudFormation template, as production does; returns the stack outputs."""
        cloudformation = self.client("cloudformation")
        stack = f"toptracks-table-{uuid.uuid4().hex[:8]}"
        cloudformation.create_stack(
            StackName=stack,
            TemplateBody=TABLE_TEMPLATE.read_text(),
            Parameters=[{"ParameterKey": "TableName", "ParameterValue": table_name}],
        )
        description = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
        assert description["StackStatus"] == "CREATE_COMPLETE", description
        return {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}

    def create_bucket(self, bucket: str) -> None:
        self.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
