"""The DynamoDB resource: a boto3 client for the top-tracks table, with dagster-aws's boto3 configuration fields."""

from __future__ import annotations

import boto3
from botocore.config import Config
from dagster import ConfigurableResource
from pydantic import Field, PrivateAttr

from toptracks_dagster.config import DEFAULT_TABLE


class DynamoDBResource(ConfigurableResource):
    """endpoint_url = DYNAMODB_ENDPOINT_URL (unset: AWS). With `local_stack`, an unset endpoint and credentials are
    those of the local stack, found or started when the run first uses the table."""

    # dagster-aws's boto3 configuration fields, same names, defaults and meaning (dagster-aws has no DynamoDB
    # resource to reuse).
    region_name: str | None = Field(default=None, description="Specifies a custom region for the Boto3 session")
    max_attempts: int = Field(
        default=10, description="Tries per request, the first included (botocore's standard retry mode)"
    )
    profile_name: str | None = Field(default=None, description="Specifies a profile to connect that session")
    use_ssl: bool = Field(default=True, description="Whether or not to use SSL. By default, SSL is used.")
    endpoint_url: str | None = Field(default=None, description="Specifies a custom endpoint for the Boto3 session.")
    verify: bool | None = Field(default=True, description="Whether or not to verify SSL certificates.")
    aws_access_key_id: str | None = Field(default=None, description="AWS access key ID for the boto3 session.")
    aws_secret_access_key: str | None = Field(default=None, description="AWS secret access key for the session.")
    aws_session_token: str | None = Field(default=None, description="AWS session token for the boto3 session.")

    table_name: str = Field(default=DEFAULT_TABLE, description="TOPTRACKS_TABLE")
    write_concurrency: int = Field(default=8, description="Artists read and written at once")
    local_stack: bool = Field(default=False, description="Use the local stack when no endpoint is set")
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    _client = PrivateAttr(default=None)
    _endpoint = PrivateAttr(default=None)

    def describe_endpoint(self) -> str:
        return self._endpoint or self.endpoint_url or f"AWS DynamoDB in {self.region_name or 'the default region'}"

    def get_client(self):
        """One client per resource instance (a run): boto3 clients are thread-safe."""
        if self._client is None:
            endpoint, keys = (
                self.endpoint_url,
                {
                    "aws_access_key_id": self.aws_access_key_id,
                    "aws_secret_access_key": self.aws_secret_access_key,
                    "aws_session_token": self.aws_session_token,
                },
            )
            if self.local_stack and not endpoint:
                from toptracks_dagster.dev.stack import ensure_local_stack

                stack = ensure_local_stack()
                endpoint = stack["DYNAMODB_ENDPOINT_URL"]
                keys = {
                    "aws_access_key_id": stack["AWS_ACCESS_KEY_ID"],
                    "aws_secret_access_key": stack["AWS_SECRET_ACCESS_KEY"],
                }
            self._endpoint = endpoint
            self._client = boto3.session.Session(profile_name=self.profile_name).client(
                "dynamodb",
                region_name=self.region_name,
                endpoint_url=endpoint,
                use_ssl=self.use_ssl,
                verify=self.verify,
                **keys,
                config=Config(
                    # The one retry layer for DynamoDB: botocore retries throttling, 5xx and dropped connections
                    # with backoff; total_max_attempts counts the first call, as dagster-aws documents it.
                    retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                    connect_timeout=self.connect_timeout_s,
                    read_timeout=self.read_timeout_s,
                    max_pool_connections=self.write_concurrency * 2 + 4,
                    # DynamoDB validates every request itself; botocore's client-side walk of each item's
                    # attributes doubled the CPU of a load.
                    parameter_validation=False,
                ),
            )
        return self._client
