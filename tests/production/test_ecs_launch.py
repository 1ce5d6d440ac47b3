"""Launch, checked: a run launched through deploy/dagster.yaml's EcsRunLauncher against an emulated ECS (moto).

The instance is deploy/dagster.yaml as shipped (PostgreSQL storage on the local server, S3 compute logs,
EcsRunLauncher). The daemon's own ECS task exists in the emulated cluster and answers the task metadata
endpoint, as on Fargate, because the launcher takes the cluster, subnets and security groups from it. The test
launches a partition of `top_tracks_job` and asserts the RunTask request and the task definition ECS would start.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from dagster import DagsterInstance
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value
from moto import mock_aws

from tests.production.aws import REGION, REPO

IMAGE = "123456789012.dkr.ecr.ap-northeast-2.amazonaws.com/toptracks-dagster:2026.11.27"
ROLE = "arn:aws:iam::123456789012:role/{}"
# What the launcher's environment holds for the secrets: the values must never reach the RunTask request or
# the task definition; only the secrets' ARNs may.
SECRET_VALUES = {
    "SPOTIFY_CLIENT_SECRET": "spotify-secret-value-9f8e7d",
    "MYSQL_PASSWORD": "mysql-password-value-1a2b3c",
    "DAGSTER_PG_PASSWORD": "",  # the test server uses trust auth; set, but empty
}
PLAIN_SETTINGS = {
    "DAGSTER_DEPLOYMENT": "prod",
    "AWS_REGION": REGION,
    "MYSQL_HOST": "artists.cluster-example.ap-northeast-2.rds.amazonaws.com",
    "MYSQL_PORT": "3306",
    "MYSQL_USER": "toptracks",
    "MYSQL_DATABASE": "production",
    "SPOTIFY_CLIENT_ID": "spotify-client-id",
    "TOPTRACKS_TABLE": "top_tracks",
    "TOPTRACKS_COUNTRIES": "US,CA",
    "TOPTRACKS_RAW_S3_BUCKET": "toptracks-raw-example",
    "TOPTRACKS_CREATE_TABLE": "false",
    "DAGSTER_COMPUTE_LOGS_BUCKET": "toptracks-dagster-logs-example",
}


class _TaskMetadata(BaseHTTPRequestHandler):
    """The ECS task metadata endpoint (v4) of the daemon's task: GET /task."""

    answer: dict = {}

    def do_GET(self):  # noqa: N802
        body = json.dumps(self.answer if self.path == "/task" else {}).encode()
        self.send_response(200 if self.path == "/task" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata_endpoint(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TaskMetadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{server.server_port}")
    yield _TaskMetadata
    server.shutdown()


def _task_level_requirements(task_definition) -> dict:
    # Fargate sizes a task by its task-level cpu/memory, which is what the launcher registers; moto adds up
    # container-level memory instead and fails on a container without one.
    return {
        "CPU": int(task_definition.cpu or 0),
        "MEMORY": int(task_definition.memory or 0),
        "PORTS": [],
        "PORTS_UDP": [],
    }


@pytest.fixture
def ecs_account(monkeypatch, metadata_endpoint):
    """Emulated AWS: a VPC, an ECS cluster with the daemon's running task, the run secrets, the roles' ARNs."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "DYNAMODB_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    from moto.ecs.models import EC2ContainerServiceBackend

    monkeypatch.setattr(
        EC2ContainerServiceBackend, "_calculate_task_resource_requirements", staticmethod(_task_level_requirements)
    )
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # as Fargate tasks need
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="dagster", Description="dagster tasks", VpcId=vpc)["GroupId"]
        ecs = boto3.client("ecs", region_name=REGION)
        cluster = ecs.create_cluster(clusterName="toptracks")["cluster"]["clusterArn"]
        ecs.register_task_definition(
            family="toptracks-daemon",
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            containerDefinitions=[{"name": "daemon", "image": IMAGE, "command": ["dagster-daemon", "run"]}],
        )
        daemon = ecs.run_task(
            cluster=cluster,
            taskDefinition="toptracks-daemon",
            launchType="FARGATE",
            networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
        )["tasks"][0]["taskArn"]
        metadata_endpoint.answer = {"Cluster": cluster, "TaskARN": daemon}

        secretsmanager = boto3.client("secretsmanager", region_name=REGION)
        secret_arns = {}
        for env_name, secret_name, arn_variable in (
            ("SPOTIFY_CLIENT_SECRET", "toptracks/spotify-client-secret", "TOPTRACKS_SPOTIFY_SECRET_ARN"),
            ("MYSQL_PASSWORD", "toptracks/mysql-password", "TOPTRACKS_MYSQL_SECRET_ARN"),
            ("DAGSTER_PG_PASSWORD", "toptracks/dagster-postgres-password", "TOPTRACKS_DAGSTER_PG_SECRET_ARN"),
        ):
            arn = secretsmanager.create_secret(Name=secret_name, SecretString="stored-in-secrets-manager")["ARN"]
            secret_arns[env_name] = arn
            monkeypatch.setenv(arn_variable, arn)
        for name, value in {
            **PLAIN_SETTINGS,
            **SECRET_VALUES,
            "TOPTRACKS_RUN_TASK_ROLE_ARN": ROLE.format("toptracks-run"),
            "TOPTRACKS_EXECUTION_ROLE_ARN": ROLE.format("toptracks-execution"),
            "TOPTRACKS_RUN_LOG_GROUP": "/ecs/toptracks-runs",
        }.items():
            monkeypatch.setenv(name, value)
        yield {
            "ecs": ecs,
            "cluster": cluster,
            "daemon": daemon,
            "subnet": subnet,
            "group": group,
            "secret_arns": secret_arns,
        }


@pytest.fixture
def fresh_definitions_module():
    """The code location is imported here with the prod settings of this test; later tests get their own import."""
    name = "toptracks_dagster.definitions"
    before = sys.modules.pop(name, None)
    yield
    sys.modules.pop(name, None)
    if before is not None:
        sys.modules[name] = before


@pytest.fixture
def production_instance(tmp_path, monkeypatch, postgres_database, ecs_account, fresh_definitions_module):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": postgres_database["host"],
        "DAGSTER_PG_PORT": str(postgres_database["port"]),
        "DAGSTER_PG_USER": postgres_database["user"],
        "DAGSTER_PG_DB": postgres_database["dbname"],
    }.items():
        monkeypatch.setenv(name, value)
    with DagsterInstance.get() as instance:
        yield instance


def test_a_partition_run_starts_as_its_own_ecs_task_with_secrets_referenced_not_copied(
    production_instance, ecs_account
):
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    instance = production_instance
    assert isinstance(instance.run_launcher, EcsRunLauncher)
    assert isinstance(instance.compute_log_manager, S3ComputeLogManager)
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1

    launcher = instance.run_launcher
    run_task_requests: list[dict] = []
    launcher.ecs.meta.events.register(
        "provide-client-params.ecs.RunTask",
        lambda params, **_: run_task_requests.append(json.loads(json.dumps(params))),
    )
    calls: list[str] = []  # every AWS API call the launcher makes, as IAM action names
    for client in (launcher.ecs, launcher.ec2.meta.client, launcher.secrets_manager, launcher.logs):
        prefix = client.meta.service_model.signing_name
        client.meta.events.register(
            "before-call", lambda model, prefix=prefix, **_: calls.append(f"{prefix}:{model.name}")
        )
    origin = LoadableTargetOrigin(module_name="toptracks_dagster.definitions", working_directory=str(REPO))
    with in_process_test_workspace(instance, origin, container_image=IMAGE) as workspace:
        location = workspace.get_code_location(workspace.code_location_names[0])
        repository = next(iter(location.get_repositories().values()))
        remote_job = repository.get_full_job("top_tracks_job")
        from toptracks_dagster.definitions import defs

        run = instance.create_run_for_job(
            job_def=defs.resolve_job_def("top_tracks_job"),
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            tags={"dagster/partition": "US", "team": "data-eng"},
        )
        instance.launch_run(run.run_id, workspace)

    # One RunTask call, in the daemon's cluster and network, tagged with the run.
    assert len(run_task_requests) == 1
    request = run_task_requests[0]
    assert request["cluster"] == ecs_account["cluster"]
    assert request["launchType"] == "FARGATE"
    assert request["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == [ecs_account["subnet"]]
    assert request["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"] == [ecs_account["group"]]
    tags = {t["key"]: t["value"] for t in request["tags"]}
    assert tags["dagster/run_id"] == run.run_id
    assert tags["dagster/job_name"] == "top_tracks_job"
    assert tags["dagster/partition"] == "US"  # propagated (allow_list); "team" is not
    assert tags["app"] == "toptracks-dagster"
    assert "team" not in tags
    # The container runs this run and nothing else: `dagster api execute_run <args>` for this run id.
    (override,) = request["overrides"]["containerOverrides"]
    assert override["name"] == "run"
    assert override["command"][:3] == ["dagster", "api", "execute_run"]
    args = deserialize_value(override["command"][3], ExecuteRunArgs)
    assert args.run_id == run.run_id
    assert args.job_origin.job_name == "top_tracks_job"
    assert args.job_origin.repository_origin.code_pointer.module == "toptracks_dagster.definitions"
    # The worker reads the same instance config: storage settings travel as {env: ...}, never as values.
    assert "env: DAGSTER_PG_PASSWORD" in override["command"][3]

    # The task ECS started, and the task definition it runs.
    ecs = ecs_account["ecs"]
    task_arns = set(ecs.list_tasks(cluster=ecs_account["cluster"])["taskArns"]) - {ecs_account["daemon"]}
    assert len(task_arns) == 1
    (task,) = ecs.describe_tasks(cluster=ecs_account["cluster"], tasks=list(task_arns))["tasks"]
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    assert definition["family"].startswith("toptracks")
    assert definition["taskRoleArn"] == ROLE.format("toptracks-run")
    assert definition["executionRoleArn"] == ROLE.format("toptracks-execution")
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    (container,) = definition["containerDefinitions"]
    assert container["name"] == "run"
    assert container["image"] == IMAGE
    # Secrets: referenced by ARN, resolved by ECS at start with the execution role.
    assert {s["name"]: s["valueFrom"] for s in container["secrets"]} == ecs_account["secret_arns"]
    # Environment: the plain settings, and none of the secrets, by name or by value.
    environment = {e["name"]: e["value"] for e in container["environment"]}
    assert environment == {
        **PLAIN_SETTINGS,
        "DAGSTER_PG_HOST": environment["DAGSTER_PG_HOST"],
        "DAGSTER_PG_PORT": environment["DAGSTER_PG_PORT"],
        "DAGSTER_PG_USER": environment["DAGSTER_PG_USER"],
        "DAGSTER_PG_DB": environment["DAGSTER_PG_DB"],
        "DAGSTER_RUN_JOB_NAME": "top_tracks_job",
    }
    assert not set(SECRET_VALUES) & set(environment)
    everything_sent = json.dumps([request, definition], default=str)
    for value in filter(None, SECRET_VALUES.values()):
        assert value not in everything_sent
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/ecs/toptracks-runs"

    # The launcher needs no more than deploy/iam/launcher-role-policy.json allows (RunTask also needs
    # ecs:TagResource for the tags and iam:PassRole for the two roles; AWS checks those, moto does not).
    launcher_policy = json.loads((REPO / "deploy" / "iam" / "launcher-role-policy.json").read_text())
    allowed = {a for statement in launcher_policy["Statement"] for a in statement["Action"]}
    assert set(calls) == {
        "ecs:DescribeTasks",
        "ecs:DescribeTaskDefinition",
        "ecs:RegisterTaskDefinition",
        "ecs:RunTask",
        "ec2:DescribeNetworkInterfaces",
    }, calls
    assert set(calls) <= allowed
    assert {"ecs:TagResource", "iam:PassRole"} <= allowed

    # The run records where it runs, for monitoring and termination.
    recorded = instance.get_run_by_id(run.run_id).tags
    assert recorded["ecs/task_arn"] == task["taskArn"]
    assert recorded["ecs/cluster"] == ecs_account["cluster"]
