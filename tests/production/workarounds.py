"""Test-side stand-ins for package defects the production tests run into, each with the test that records it.

No `from __future__ import annotations` here: Dagster must see the ResourceDependency annotation below.
"""

from dagster import ResourceDependency
from dagster_aws.s3 import S3Resource

from toptracks_dagster.raw_storage.resources import S3RawStorage


class S3RawStorageResolvable(S3RawStorage):
    """S3RawStorage with its `s3` annotation evaluated. raw_storage/resources.py has `from __future__ import
    annotations`, which turns `ResourceDependency[S3Resource]` into a string Dagster does not recognise, so
    `S3RawStorage(s3=S3Resource(...))` is rejected and a `prod` code location with TOPTRACKS_RAW_S3_BUCKET set
    does not load (recorded by test_run_role_policy.py::test_prod_resources_build_s3_raw_storage)."""

    s3: ResourceDependency[S3Resource]
