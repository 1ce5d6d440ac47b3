"""The DynamoDB resource. dagster-aws has no DynamoDB resource; this one builds on its boto3 configuration."""

from __future__ import annotations

import boto3
from botocore.config import Config
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field, PrivateAttr

from toptracks_dagster.config import DEFAULT_TABLE


class DynamoDBResource(ResourceWithBoto3Configuration):
    """A boto3 DynamoDB client for the top-tracks table (endpoint_url = DYNAMODB_ENDPOINT_URL, unset = AWS)."""

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
