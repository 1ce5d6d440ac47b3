"""deploy/Dockerfile, checked without a Docker engine (none runs on this machine; `docker build` needs one).

The tests read the Dockerfile and what it installs: a pinned base image, a non-root user, no secret in
ENV/ARG, dependencies from a lock file of exact pins without the test or docs extras, and a build context
that leaves out local state and credentials. Building and scanning the image itself happens in a pipeline
with Docker (docs/production.md, step 4).
"""

from __future__ import annotations

import re
import shlex

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.production.aws import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / "deploy" / "Dockerfile.dockerignore"
LOCK = REPO / "deploy" / "requirements.lock"
SECRET_NAMES = {
    "SPOTIFY_CLIENT_SECRET",
    "MYSQL_PASSWORD",
    "DAGSTER_PG_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
}
SECRET_LIKE = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|PRIVATE|ACCESS_KEY", re.IGNORECASE)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(entry.split(None, 1)[0].upper(), entry.split(None, 1)[1] if " " in entry else "") for entry in logical]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def env_names(arguments: str) -> list[str]:
    # ENV a=1 b=2, or the legacy ENV a 1
    parts = shlex.split(arguments)
    return [p.split("=", 1)[0] for p in parts] if "=" in parts[0] else [parts[0]]


def test_base_image_is_pinned(dockerfile):
    bases = [args for name, args in dockerfile if name == "FROM"]
    assert len(bases) == 1
    image = bases[0].split()[0]
    assert "@sha256:" in image or re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), image
    assert not image.endswith(":latest")


def test_runs_as_a_non_root_user(dockerfile):
    users = [args.strip() for name, args in dockerfile if name == "USER"]
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # The last USER comes after every RUN, so nothing later runs as root either.
    last_user = max(i for i, (name, _) in enumerate(dockerfile) if name == "USER")
    assert all(name != "RUN" for name, _ in dockerfile[last_user:])


def test_no_secret_is_baked_in(dockerfile):
    names = [n for name, args in dockerfile if name in {"ENV", "ARG"} for n in env_names(args)]
    assert names, "the parser found no ENV at all"
    assert not SECRET_NAMES & set(names)
    assert not [n for n in names if SECRET_LIKE.search(n)]
    copied = " ".join(args for name, args in dockerfile if name in {"COPY", "ADD"})
    assert not re.search(r"\.env\b|\.aws|credentials|secrets?\b", copied, re.IGNORECASE)


def test_installs_the_lock_file_and_the_package_without_extras(dockerfile):
    runs = [args for name, args in dockerfile if name == "RUN" and "pip install" in args]
    assert any("--requirement deploy/requirements.lock" in r or "-r deploy/requirements.lock" in r for r in runs)
    package = [r for r in runs if re.search(r"pip install .*\s\.(\s|$)", r)]
    assert package and all("--no-deps" in r for r in package)
    assert not [r for r in runs if "[" in r or " -e " in r or "--editable" in r]


def test_the_lock_pins_everything_and_holds_no_test_or_docs_dependency():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    locked = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            locked[canonicalize_name(requirement.name)] = spec.version
    # Every runtime dependency and the postgres extra are locked, at the version pyproject pins where it pins one.
    for text in [*pyproject["project"]["dependencies"], *extras["postgres"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is missing from {LOCK.name}"
        assert requirement.specifier.contains(locked[name]), f"{name}=={locked[name]} violates {requirement}"
    # Test and docs tools are not: the image carries what runs, nothing else.
    for extra in ("test", "docs"):
        for text in extras[extra]:
            name = canonicalize_name(Requirement(text).name)
            if name == "toptracks-dagster":
                continue  # the package itself
            assert name not in locked, f"{name} (extra {extra}) is in {LOCK.name}"
    assert "toptracks-dagster" not in locked


def test_the_build_context_leaves_out_local_state():
    rules = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "**", "the context starts empty and lists what the image needs"
    allowed = [rule[1:] for rule in rules if rule.startswith("!")]
    assert not [a for a in allowed if re.search(r"\.venv|node_modules|data|tests|\.env|\.git|dagster_home", a)]
    copied = [
        source
        for name, args in instructions(DOCKERFILE.read_text())
        if name == "COPY"
        for source in args.split()[:-1]
        if not source.startswith("--")
    ]
    assert "toptracks_dagster" in copied and "deploy/dagster.yaml" in copied
    for source in copied:  # every COPY source is in the context
        assert any(
            a.rstrip("*").rstrip("/") == source.rstrip("/") or source.startswith(a.rstrip("*")) for a in allowed
        ), source


def test_the_production_workspace_points_at_the_code_server(monkeypatch):
    import yaml
    from dagster._core.workspace.config_schema import ensure_workspace_config

    path = REPO / "deploy" / "workspace.yaml"
    monkeypatch.setenv("DAGSTER_CODE_SERVER_HOST", "toptracks-code.toptracks.local")
    config = ensure_workspace_config(yaml.safe_load(path.read_text()), str(path))
    (entry,) = config["load_from"]
    assert entry["grpc_server"]["location_name"] == "toptracks_dagster"
    # The image's code server serves the same location on the same port.
    cmd = [args for name, args in instructions(DOCKERFILE.read_text()) if name == "CMD"][-1]
    assert '"--port", "4000"' in cmd and '"toptracks_dagster"' in cmd and entry["grpc_server"]["port"] == 4000
