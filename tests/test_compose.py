"""Checks on docker-compose.yml, the deployment contract.

Another program loads the compose file with yaml.safe_load and starts the Kiln
services as local processes, so these tests read it the same way rather than
through docker-compose's own model.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"

# Service name -> module run with `python -m`.  The names are part of the
# contract with the local launcher, so a rename must show up here.
KILN_SERVICES = {
    "frontend": "frontend_svc",
    "planner": "planner_svc",
    "codegen-worker-cpu": "codegen_worker",
    "codegen-worker-cuda": "codegen_worker",
    "codegen-worker-rocm": "codegen_worker",
    "profile-worker-cpu": "profile_worker",
    "profile-worker-cuda": "profile_worker",
    "profile-worker-rocm": "profile_worker",
}

SHARED_ENV_KEYS = {
    "KILN_REDIS_URL",
    "KILN_STORE_URL",
    "KILN_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "KILN_WORK_DIR",
}

QUEUE_RE = re.compile(
    r"^(codegen\.(cpu|cuda|rocm)"
    r"|profile\.(cpu\.x86_64|cuda\.sm\d+|rocm\.gfx[0-9a-f]+))$"
)


@pytest.fixture(scope="module")
def compose():
    with COMPOSE_FILE.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def _queues(command):
    """Values given to --queues, as `--queues a,b` or `--queues=a,b`."""
    values = []
    for i, arg in enumerate(command):
        if arg == "--queues":
            assert i + 1 < len(command), f"--queues without a value in {command}"
            values.append(command[i + 1])
        elif arg.startswith("--queues="):
            values.append(arg.split("=", 1)[1])
    return [q for v in values for q in v.split(",")]


def test_compose_config_is_valid():
    exe = shutil.which("docker-compose")
    if exe is None:
        reason = "docker-compose is not installed"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout


def test_kiln_services_present(services):
    missing = sorted(set(KILN_SERVICES) - set(services))
    assert not missing, f"services missing from docker-compose.yml: {missing}"


@pytest.mark.parametrize("name", sorted(KILN_SERVICES))
def test_command_is_a_python_module_in_the_repo(services, name):
    command = services[name]["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), (
        f"{name}: command must be a list of strings for the local launcher"
    )
    assert command[:2] == ["python", "-m"] and len(command) >= 3, (
        f"{name}: expected `python -m MODULE ...`, got {command}"
    )
    module = command[2]
    assert module == KILN_SERVICES[name], f"{name} runs {module}"
    main = REPO.joinpath(*module.split(".")) / "__main__.py"
    assert main.is_file(), f"{name}: `python -m {module}` needs {main.relative_to(REPO)}"


@pytest.mark.parametrize("name", sorted(KILN_SERVICES))
def test_shared_environment(compose, services, name):
    shared = compose["x-kiln-env"]
    assert set(shared) >= SHARED_ENV_KEYS, f"x-kiln-env lacks {sorted(SHARED_ENV_KEYS - set(shared))}"
    env = services[name].get("environment")
    assert isinstance(env, dict), f"{name}: environment must be a mapping"
    assert all(isinstance(v, str) for v in env.values()), f"{name}: environment values must be strings, got {env}"
    wrong = {k: env.get(k) for k in SHARED_ENV_KEYS if env.get(k) != shared[k]}
    assert not wrong, f"{name}: shared env missing or overridden: {wrong}"


def test_worker_queues(services):
    for name, svc in services.items():
        command = svc.get("command")
        queues = _queues(command) if isinstance(command, list) else []
        if "worker" in name:
            assert queues, f"{name}: a worker must name its --queues"
        bad = [q for q in queues if not QUEUE_RE.match(q)]
        assert not bad, f"{name}: queue names {bad} do not match {QUEUE_RE.pattern}"


def test_referenced_dockerfiles_exist(services):
    built = {n: s["build"] for n, s in services.items() if "build" in s}
    assert set(KILN_SERVICES) <= set(built), "every Kiln service is built from the repo"
    for name, build in built.items():
        if isinstance(build, str):
            build = {"context": build}
        context = (REPO / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"


def test_storage_wiring(compose, services):
    """What Kiln is told about Redis and MinIO must match what Compose runs."""
    shared = compose["x-kiln-env"]
    for key in ("KILN_REDIS_URL", "KILN_S3_ENDPOINT_URL"):
        host = urlparse(shared[key]).hostname
        assert host in services, f"{key} points at {host}, not a service"

    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_ROOT_USER"] == shared["AWS_ACCESS_KEY_ID"]
    assert minio_env["MINIO_ROOT_PASSWORD"] == shared["AWS_SECRET_ACCESS_KEY"]

    bucket = urlparse(shared["KILN_STORE_URL"]).netloc
    init_script = " ".join(services["minio-init"]["entrypoint"])
    assert re.search(rf"mc mb --ignore-existing \S+/{re.escape(bucket)}\b", init_script), (
        f"minio-init does not create bucket {bucket}"
    )

    for name in KILN_SERVICES:
        deps = services[name].get("depends_on", {})
        assert deps.get("redis", {}).get("condition") == "service_healthy", name
        assert deps.get("minio-init", {}).get("condition") == "service_completed_successfully", name
