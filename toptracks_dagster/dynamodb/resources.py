"""The DynamoDB resource. dagster-aws has no DynamoDB resource; this one takes the fields of its boto3
configuration (`ResourceWithBoto3Configuration`), declared here: importing dagster-aws costs a run 0.4-0.5 s
(its components import Dagster's test utilities), which a run that needs neither S3 nor RDS IAM auth skips."""

from __future__ import annotations

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from toptracks_dagster.config import DEFAULT_TABLE
from toptracks_dagster.dynamodb.wire import parse_items_with_json


class DynamoDBResource(ConfigurableResource):
    """A boto3 DynamoDB client for the top-tracks table (endpoint_url = DYNAMODB_ENDPOINT_URL, unset = AWS)."""

    # dagster-aws's boto3 configuration fields, same names, defaults and meaning.
    region_name: str | None = Field(default=None, description="Specifies a custom region for the Boto3 session")
    max_attempts: int = Field(
        default=5, description="Boto3's maximum retry attempts, the initial call included (standard retry mode)"
    )
    profile_name: str | None = Field(default=None, description="Specifies a profile to connect that session")
    use_ssl: bool = Field(default=True, description="Whether or not to use SSL. By default, SSL is used.")
    endpoint_url: str | None = Field(default=None, description="Specifies a custom endpoint for the Boto3 session.")
    verify: bool | None = Field(default=True, description="Whether or not to verify SSL certificates.")
    aws_access_key_id: str | None = Field(default=None, description="AWS access key ID for the boto3 session.")
    aws_secret_access_key: str | None = Field(default=None, description="AWS secret access key for the session.")
    aws_session_token: str | None = Field(default=None, description="AWS session token for the boto3 session.")

    table_name: str = Field(default=DEFAULT_TABLE, description="TOPTRACKS_TABLE")
    write_concurrency: int = Field(default=8, description="BatchWriteItem calls in flight at once")
    max_batch_retries: int = Field(
        default=8, description="Resends of UnprocessedItems (exponential backoff with jitter) before the run fails"
    )
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    _client = PrivateAttr(default=None)

    def describe_endpoint(self) -> str:
        return self.endpoint_url or f"AWS DynamoDB in {self.region_name or 'the default region'}"

    def get_client(self):
        """One client per resource instance (a run): boto3 clients are thread-safe, and building one (a session,
        the service model) costs 0.15-0.3 s here."""
        if self._client is None:
            self._client = self._new_client()
            parse_items_with_json(self._client)
        return self._client

    def _new_client(self):
        session = boto3.session.Session(profile_name=self.profile_name)
        return session.client(
            "dynamodb",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(
                # botocore's standard mode retries throttling errors and dropped connections with backoff;
                # UnprocessedItems are not errors to botocore, so the loader resends those itself.
                # total_max_attempts counts the first call, as dagster-aws documents max_attempts.
                retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                connect_timeout=self.connect_timeout_s,
                read_timeout=self.read_timeout_s,
                max_pool_connections=self.write_concurrency * 2 + 4,
                # Client-side validation walks every attribute of every item: measured, it was over half of the
                # load's CPU. Items are built and sized by dynamodb/items.py, and DynamoDB validates each request
                # again (ValidationException), so a malformed request is still refused, by the server.
                parameter_validation=False,
            ),
        )
