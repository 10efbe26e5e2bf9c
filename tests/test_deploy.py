"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile*, deploy/k8s, deploy/prometheus.yml.

Nothing here builds or runs a container (there is no Docker engine on the development machines): the
files are parsed and checked against the Compose Specification schema (shipped by the docker-compose
1.29.2 wheel, installed by scripts/bootstrap), against Kubernetes' object structure, and against the
code they start: modules, `gls` verbs, `Settings` fields and defaults, gateway routes and the
distributions that `pip install .` brings into the image. The hardening they rely on (secrets without
defaults, an authenticated Redis with a memory ceiling, listeners on loopback unless configured) is
checked here too, the last also against a real worker process and a real gateway.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import jsonschema
import pytest
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import RedisServer, free_port, wait_for_port

from services.cluster import DURABLE_AOF
from services.settings import ENVIRONMENT_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {"cpu": DEPLOY / "Dockerfile", "cuda": DEPLOY / "Dockerfile.cuda"}
ENTRYPOINT_SCRIPT = DEPLOY / "docker-entrypoint.sh"
SERVICE_MODULES = {"services.gateway", "services.coordinator", "services.bound_worker"}
NAMESPACE = "gls"

# The secrets an operator provides (deploy/README.md): docker-compose.yml gives these variables no default ...
COMPOSE_SECRETS = {"GLS_TOKENS": f"{secrets.token_hex(32)}=tenant-a,{secrets.token_hex(32)}=tenant-b",
                   "GLS_WORKER_TOKEN": secrets.token_hex(32), "REDIS_PASSWORD": secrets.token_hex(32)}
# ... and deploy/k8s ships no Secret object: `kubectl create secret generic NAME --from-literal=KEY=...` makes them.
K8S_SECRETS = {"gls-tokens": {"GLS_TOKENS": COMPOSE_SECRETS["GLS_TOKENS"]},
               "gls-worker-token": {"GLS_WORKER_TOKEN": COMPOSE_SECRETS["GLS_WORKER_TOKEN"]},
               "gls-redis": {"REDIS_PASSWORD": COMPOSE_SECRETS["REDIS_PASSWORD"]}}
SECRET_LIKE = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|REDISCLI_AUTH|API_?KEY", re.I)
# Values that have shipped as "defaults" in deployment files and are the first an attacker tries.
WELL_KNOWN_SECRETS = re.compile(r"change[-_]?me|dev[-_](?:worker[-_])?token|\bfoobared\b|\bhunter2\b", re.I)
# Every listener's bind-address setting, by the module that serves it; the coordinator listens on nothing.
BIND_SETTINGS = {"services.bound_worker": "worker_host", "services.gateway": "gateway_host"}

# --------------------------------------------------------------------------------------------- helpers


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"unparsable requirement {requirement!r}"
    return canonical(match.group(1))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_pin() -> str:
    pins = [req.replace(" ", "") for req in pyproject()["project"]["dependencies"] if requirement_name(req) == "torch"]
    assert len(pins) == 1 and "==" in pins[0], f"pyproject.toml must pin torch exactly, found {pins}"
    return pins[0]


def default_settings() -> Settings:
    return settings_from({})


def settings_from(environment: Mapping[str, str]) -> Settings:
    """Settings as a process with exactly ``environment`` (for the GLS_* variables) would read them."""
    unknown = sorted(name for name in environment if name.startswith("GLS_") and name not in ENVIRONMENT_VARIABLES)
    assert not unknown, f"not fields of services.settings.Settings: {unknown}"
    saved = {name: os.environ.pop(name) for name in ENVIRONMENT_VARIABLES if name in os.environ}
    try:
        os.environ.update({name: str(value) for name, value in environment.items() if name in ENVIRONMENT_VARIABLES})
        return Settings()
    finally:
        for name in ENVIRONMENT_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(saved)


def check_command(argv: list[str], where: str) -> None:
    """``python -m MODULE`` must name a runnable module, ``gls VERB`` a command of the typer app in services.cli."""
    assert argv, f"{where}: empty command"
    if argv[0] in ("python", "python3") and argv[1:2] == ["-m"]:
        module = argv[2]
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{where}: module {module} does not exist"
        if spec.submodule_search_locations is not None:
            assert importlib.util.find_spec(f"{module}.__main__") is not None, \
                f"{where}: package {module} has no __main__.py, so `python -m {module}` cannot run"
    elif argv[0] == "gls":
        verbs = [arg for arg in argv[1:] if not arg.startswith("-")]
        if verbs:
            assert verbs[0] in gls_verbs(), f"{where}: `gls {verbs[0]}` is not a command of services.cli:app"
    else:
        raise AssertionError(f"{where}: command {argv} is neither `python -m services.<x>` nor `gls <verb>`")


def gls_verbs() -> set[str]:
    import typer

    from services import cli

    command = typer.main.get_command(cli.app)
    commands = getattr(command, "commands", None)  # a click/typer group (typer may vendor its own click)
    assert isinstance(commands, dict), "services.cli:app has a single command; expected verbs"
    return set(commands)


def healthcheck_argv(test: str | list[str]) -> list[str]:
    """The command of a compose healthcheck test: the shell form (a string, or CMD-SHELL) split, or CMD's words."""
    if isinstance(test, str):
        return shlex.split(test)
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]


def python_c_source(argv: list[str]) -> str:
    """The program of ``python -c PROGRAM`` (a healthcheck), compiled to catch syntax errors."""
    assert argv[:2] in (["python", "-c"], ["python3", "-c"]), f"not a `python -c` command: {argv}"
    compile(argv[2], "<healthcheck>", "exec")
    return argv[2]


# ---------------------------------------------------------------------------------------- docker-compose

_INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, environment: Mapping[str, str]) -> Any:
    """Compose variable interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}."""
    if isinstance(value, dict):
        return {key: interpolate(item, environment) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, environment) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            return environment.get(match.group("named"), "")
        expression = match.group("braced")
        parsed = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?", expression, flags=re.S)
        assert parsed, f"invalid interpolation ${{{expression}}}"
        name, operator, argument = parsed.groups()
        present = name in environment and (environment[name] != "" or operator not in (":-", ":?"))
        if present or operator is None:
            return environment.get(name, "")
        if operator in (":-", "-"):
            return interpolate(argument, environment)
        raise AssertionError(f"required variable {name} is not set: {argument}")

    return _INTERPOLATION.sub(substitute, value)


@functools.cache
def compose_raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@functools.cache
def compose() -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` sees it with only the required secrets set (merge keys
    resolved)."""
    return interpolate(compose_raw(), COMPOSE_SECRETS)


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def gls_compose_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the GLS image (all but redis and third-party tools)."""
    return {name: service for name, service in compose_services().items()
            if str(service.get("image", "")).startswith("gls:")}


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {str(key): "" if value is None else str(value) for key, value in environment.items()}


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "no command: the image's CMD is only `gls --help`"
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def container_port(spec: str | int) -> int:
    """The container side of a compose port: '127.0.0.1:8000:8000/tcp' -> 8000."""
    return int(str(spec).split("/")[0].rsplit(":", 1)[-1])


_PORT_SPEC = re.compile(r"^(?:(?:\[[0-9a-fA-F:.]*\]|[0-9.]+|[A-Za-z0-9.-]+):)?"  # [host address:]
                        r"(?:\d+(?:-\d+)?:)?\d+(?:-\d+)?(?:/(?:tcp|udp|sctp))?$")  # [published:]target[/protocol]
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|ms|s|m|h))+$")


def compose_format_checker() -> jsonschema.FormatChecker:
    """The formats the Compose schema uses and compose itself asserts (ports, expose, duration)."""
    checker = jsonschema.FormatChecker()

    @checker.checks("ports")
    def ports(instance: object) -> bool:
        return not isinstance(instance, str) or bool(_PORT_SPEC.match(instance))

    @checker.checks("expose")
    def expose(instance: object) -> bool:
        return not isinstance(instance, str) or bool(re.match(r"^\d+(?:-\d+)?(?:/(?:tcp|udp|sctp))?$", instance))

    @checker.checks("duration")
    def duration(instance: object) -> bool:
        return not isinstance(instance, str) or bool(_DURATION.match(instance))

    return checker


@functools.cache
def compose_schema() -> dict[str, Any]:
    # find_spec of the top-level package imports nothing (compose's own modules need docker-py, not installed).
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, \
        "the docker-compose 1.29.2 wheel (for its compose_spec.json) is not installed: run scripts/bootstrap"
    path = Path(next(iter(spec.submodule_search_locations))) / "config" / "compose_spec.json"
    assert path.is_file(), f"{path} is missing"
    schema = json.loads(path.read_text())
    assert isinstance(schema, dict)
    return schema


def compose_validator() -> jsonschema.Draft4Validator:
    """Draft 4, as docker-compose 1.29.2 validates with it (the schema's `id` keywords are draft-4 style)."""
    schema = compose_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=compose_format_checker())


def test_compose_validates_against_compose_specification_schema() -> None:
    validator = compose_validator()
    errors = [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
              for error in validator.iter_errors(compose())]
    assert not errors, "docker-compose.yml is not a valid Compose file:\n" + "\n".join(errors)


def test_compose_schema_catches_mistakes() -> None:
    """The validation above has teeth: a misspelt key and a bad duration are rejected."""
    validator = compose_validator()
    broken = json.loads(json.dumps(compose()))
    broken["services"]["gateway"]["helthcheck"] = broken["services"]["gateway"].pop("healthcheck")
    broken["services"]["redis"]["healthcheck"]["interval"] = "5 seconds"
    messages = [error.message for error in validator.iter_errors(broken)]
    assert any("helthcheck" in message for message in messages), messages
    assert any("5 seconds" in message for message in messages), messages


def test_compose_references_resolve() -> None:
    """What `docker compose config` would reject beyond the schema: undefined services, volumes, files."""
    services = compose_services()
    declared_volumes = set(compose().get("volumes") or {})
    for name, service in services.items():
        assert re.fullmatch(r"[a-zA-Z0-9._-]+", name), name
        depends_on = service.get("depends_on") or {}
        for dependency in depends_on:
            assert dependency in services, f"{name} depends on undefined service {dependency}"
            if isinstance(depends_on, dict) and depends_on[dependency]["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy, " \
                                                              f"but {dependency} has no healthcheck"
            if not service.get("profiles"):
                assert not services[dependency].get("profiles"), \
                    f"{name} (always on) depends on {dependency}, which runs only in profiles"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts missing file {source}"
            else:
                assert source in declared_volumes, f"{name} mounts undeclared volume {source}"
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            assert dockerfile.is_file(), f"{name} builds from missing {dockerfile}"


def test_compose_has_the_cluster_services() -> None:
    services = compose_services()
    assert {"redis", "gateway", "coordinator", "worker", "worker-gpu"} <= set(services)
    commands = {name: compose_command(service) for name, service in gls_compose_services().items()}
    assert commands["gateway"] == ["python", "-m", "services.gateway"]
    assert commands["coordinator"] == ["python", "-m", "services.coordinator"]
    assert commands["worker"] == commands["worker-gpu"] == ["python", "-m", "services.bound_worker"]
    cpu, cuda = (service["build"]["dockerfile"] for service in (services["gateway"], services["worker-gpu"]))
    assert (cpu, cuda) == ("deploy/Dockerfile", "deploy/Dockerfile.cuda")
    for name in ("gateway", "coordinator", "worker"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile", name


def test_compose_commands_exist_in_the_code() -> None:
    for name, service in gls_compose_services().items():
        check_command(compose_command(service), f"docker-compose.yml service {name}")


def option(argv: list[str], name: str) -> str:
    """The value after ``name`` in a command line (redis-server --name value)."""
    assert argv.count(name) == 1, f"{name} must appear once in {argv}"
    return argv[argv.index(name) + 1]


def test_compose_redis() -> None:
    redis_service = compose_services()["redis"]
    assert redis_service["image"] == "redis:7"
    command = compose_command(redis_service)
    assert command[0] == "redis-server"
    assert [option(command, name) for name in DURABLE_AOF[::2]] == list(DURABLE_AOF[1::2])
    assert any(isinstance(volume, str) and volume.endswith(":/data") and not volume.startswith((".", "/"))
               for volume in redis_service["volumes"]), "redis data must live on a named volume at /data"
    assert not redis_service.get("ports"), "redis must not be published on the host"


def test_compose_redis_password_and_memory_ceiling() -> None:
    """requirepass from a variable without default; maxmemory with noeviction; the health check authenticates."""
    raw_command = compose_command(compose_raw()["services"]["redis"])
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", option(raw_command, "--requirepass")), \
        "--requirepass must be ${REDIS_PASSWORD:?message}: compose then refuses to start without one"
    redis_service = compose_services()["redis"]
    command = compose_command(redis_service)
    assert option(command, "--requirepass") == COMPOSE_SECRETS["REDIS_PASSWORD"]
    assert re.fullmatch(r"\d+(?:[kmg]b?)?", option(command, "--maxmemory"), flags=re.I), option(command, "--maxmemory")
    assert option(command, "--maxmemory-policy") == "noeviction", "job state must never be evicted"
    # redis-cli reads REDISCLI_AUTH; without the password `ping` answers NOAUTH and the grep fails
    assert compose_environment(redis_service)["REDISCLI_AUTH"] == COMPOSE_SECRETS["REDIS_PASSWORD"]
    assert redis_service["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]


def required_variables(text: str) -> set[str]:
    """The variables a compose file interpolates as ``${NAME:?message}`` (refused when unset or empty)."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))


def test_compose_refuses_to_start_without_each_secret() -> None:
    assert required_variables(COMPOSE_FILE.read_text()) == set(COMPOSE_SECRETS)
    for name in COMPOSE_SECRETS:
        for missing in ({key: value for key, value in COMPOSE_SECRETS.items() if key != name},
                        {**COMPOSE_SECRETS, name: ""}):
            with pytest.raises(AssertionError, match=f"required variable {name} is not set"):
                interpolate(compose_raw(), missing)


def secret_defaults(text: str) -> list[str]:
    """``${NAME:-value}`` / ``${NAME-value}`` fallbacks of secret-like variables."""
    return [match.group(0) for match in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?-[^}]*\}", text)
            if SECRET_LIKE.search(match.group(1))]


def deployment_files() -> list[Path]:
    return [COMPOSE_FILE, *sorted(path for path in DEPLOY.rglob("*") if path.is_file())]


def test_no_secret_has_a_default_or_a_well_known_value() -> None:
    assert secret_defaults("${GLS_TOKENS:-dev-token=dev} ${GLS_LOG_LEVEL:-info} ${REDIS_PASSWORD-x}") == \
        ["${GLS_TOKENS:-dev-token=dev}", "${REDIS_PASSWORD-x}"]
    assert WELL_KNOWN_SECRETS.search("GLS_WORKER_TOKEN: change-me-worker-token")
    for path in deployment_files():
        text = path.read_text()
        where = path.relative_to(ROOT)
        assert not secret_defaults(text), f"{where}: secrets with a default {secret_defaults(text)}"
        assert not WELL_KNOWN_SECRETS.search(text), f"{where}: {WELL_KNOWN_SECRETS.search(text)}"
    for name, service in compose_services().items():
        for key, value in compose_environment(service).items():
            if SECRET_LIKE.search(key):
                assert value in COMPOSE_SECRETS.values(), f"{name}: {key} must come from a required variable"
    for path in DOCKERFILES.values():
        for keyword, arguments in dockerfile_instructions(path):
            if keyword in ("ENV", "ARG"):
                assert not SECRET_LIKE.search(arguments), f"{path.name}: {keyword} {arguments} bakes a secret in"


def test_compose_shared_environment_anchor() -> None:
    raw = compose_raw()
    shared = raw.get("x-gls-environment")
    assert isinstance(shared, dict) and shared, "x-gls-environment (the shared environment) is missing"
    assert COMPOSE_FILE.read_text().count("<<: *gls-environment") == len(gls_compose_services())
    shared_environment = compose_environment({"environment": compose()["x-gls-environment"]})
    for name, service in gls_compose_services().items():
        environment = compose_environment(service)
        assert shared_environment.items() <= environment.items(), f"{name} does not use x-gls-environment"
    assert shared_environment["GLS_REDIS_URL"] == f"redis://:{COMPOSE_SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert shared_environment["GLS_DATA_DIR"] == "/data"
    assert shared_environment["GLS_WORKER_TOKEN"] == COMPOSE_SECRETS["GLS_WORKER_TOKEN"]
    # the tenants' tokens only where they are checked
    assert {name for name, service in gls_compose_services().items() if "GLS_TOKENS" in compose_environment(service)} \
        == {"gateway"}
    assert settings_from(compose_environment(compose_services()["gateway"])).tenants_by_token, \
        "GLS_TOKENS must be set (a gateway without tokens admits no one)"


def test_compose_environment_is_settings() -> None:
    """Every GLS_* variable is a Settings field and every service's environment validates as Settings."""
    redis_url = urlsplit(compose_environment(compose_services()["gateway"])["GLS_REDIS_URL"])
    for name, service in gls_compose_services().items():
        environment = compose_environment(service)
        stray = sorted(key for key in environment if key not in ENVIRONMENT_VARIABLES)
        assert not stray, f"{name}: {stray} are not GLS settings ({ENVIRONMENT_VARIABLES})"
        settings = settings_from(environment)
        assert str(settings.data_dir) in {target.split(":")[1] for target in service.get("volumes", [])}, \
            f"{name}: GLS_DATA_DIR={settings.data_dir} is not a mounted volume"
        assert urlsplit(settings.redis_url).hostname == "redis"
    assert redis_url.port == 6379 and "redis" in compose_services()


def test_compose_gateway() -> None:
    gateway = compose_services()["gateway"]
    settings = settings_from(compose_environment(gateway))
    assert {container_port(port) for port in gateway["ports"]} == {settings.gateway_port, settings.certifier_port}
    for port in gateway["ports"]:
        published = str(port).split(":")
        assert len(published) == 3 and published[0] == "127.0.0.1", \
            f"gateway port {port}: publish on loopback by default (PUBLISH_ADDRESS widens it)"
    # the shell form: podman-compose 1.0.3 re-quotes exec-form words and breaks those with spaces or quotes
    assert isinstance(gateway["healthcheck"]["test"], str), gateway["healthcheck"]["test"]
    program = python_c_source(healthcheck_argv(gateway["healthcheck"]["test"]))
    url = re.search(r"['\"](http://[^'\"]+)['\"]", program)
    assert url and "urllib" in program, program
    parts = urlsplit(url.group(1))
    assert parts.port == settings.gateway_port and parts.path == "/healthz", url.group(1)
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_workers_scale() -> None:
    services = compose_services()
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        settings = settings_from(compose_environment(worker))
        assert "container_name" not in worker and "ports" not in worker, f"{name}: fixed names or host ports " \
                                                                        "prevent --scale"
        assert isinstance(worker["deploy"]["replicas"], int) and worker["deploy"]["replicas"] >= 1
        assert {container_port(port) for port in worker.get("expose", [])} == {settings.worker_port}
        assert "GLS_WORKER_ADVERTISE" not in compose_environment(worker), \
            f"{name}: a fixed GLS_WORKER_ADVERTISE would be shared by all replicas (the entrypoint sets it)"
        # the shell form: podman-compose 1.0.3 consumes an exec-form list, and the second replica finds it empty
        probe = worker["healthcheck"]["test"]
        assert isinstance(probe, str) and healthcheck_argv(probe) == ["python", "-m", "services.worker_probe"], probe
        check_command(healthcheck_argv(probe), f"{name} healthcheck")
        # the probe dials the advertised address, which in the probe's environment is loopback and the port
        assert settings.advertised_worker_address == f"127.0.0.1:{settings.worker_port}"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert settings_from(compose_environment(services["worker"])).device == "cpu"


COMPOSE_INTERNAL_TLS = DEPLOY / "compose.internal-tls.yml"
K8S_INTERNAL_TLS = DEPLOY / "k8s-internal-tls"
INTERNAL_TLS_FILES = {"GLS_INTERNAL_TLS_CERT_FILE": "service.pem", "GLS_INTERNAL_TLS_KEY_FILE": "service-key.pem",
                      "GLS_INTERNAL_TLS_CA_FILE": "ca.pem"}


def assert_internal_tls(settings: Settings, where: str) -> None:
    """All three GLS_INTERNAL_TLS_* files and the shared worker name are set (the values the README's PKI makes)."""
    files = (settings.internal_tls_cert_file, settings.internal_tls_key_file, settings.internal_tls_ca_file)
    assert all(path is not None for path in files), where
    assert settings.internal_tls_server_name == "gls-worker", where


def test_compose_internal_tls_override() -> None:
    """deploy/compose.internal-tls.yml: a valid override that gives every GLS service the three files as secrets."""
    raw = yaml.safe_load(COMPOSE_INTERNAL_TLS.read_text())
    with pytest.raises(AssertionError, match="GLS_INTERNAL_TLS_DIR"):
        interpolate(raw, COMPOSE_SECRETS)  # compose refuses to start without the folder
    override = interpolate(raw, {**COMPOSE_SECRETS, "GLS_INTERNAL_TLS_DIR": "/srv/gls-pki"})
    errors = [error.message for error in compose_validator().iter_errors(override)]
    assert not errors, errors
    base = gls_compose_services()
    assert set(override["services"]) == set(base), "every service of the GLS image needs the certificate"
    secrets_by_file = {Path(secret["file"]).name: name for name, secret in override["secrets"].items()}
    assert sorted(secrets_by_file) == sorted(INTERNAL_TLS_FILES.values())
    for name, service in override["services"].items():
        environment = {**compose_environment(base[name]), **compose_environment(service)}
        assert_internal_tls(settings_from(environment), name)
        for variable, filename in INTERNAL_TLS_FILES.items():
            secret = secrets_by_file[filename]
            assert secret in service["secrets"], f"{name}: secret {secret} is not mounted"
            assert environment[variable] == f"/run/secrets/{secret}", f"{name}: {variable}"


def test_k8s_internal_tls_overlay() -> None:
    """deploy/k8s-internal-tls: patches the three workloads with the files of Secret gls-internal-tls."""
    kustomization = yaml.safe_load((K8S_INTERNAL_TLS / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["resources"] == ["../k8s"]
    patches = {entry["path"] for entry in kustomization["patches"]}
    assert patches == {path.name for path in K8S_INTERNAL_TLS.glob("*.y*ml")} - {"kustomization.yaml"}
    deployments = k8s_objects("Deployment")
    readme = (DEPLOY / "README.md").read_text()
    patched = set()
    for filename in sorted(patches):
        patch = yaml.safe_load((K8S_INTERNAL_TLS / filename).read_text())
        name = patch["metadata"]["name"]
        assert patch["kind"] == "Deployment" and name in deployments and patch["metadata"]["namespace"] == NAMESPACE
        patched.add(name)
        pod = patch["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        base = k8s_container(name)
        assert container["name"] == base["name"]
        ((volume_name, secret_name),) = [(v["name"], v["secret"]["secretName"]) for v in pod["volumes"]]
        assert f"create secret generic {secret_name}" in readme, f"deploy/README.md does not create {secret_name}"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume_name]
        assert mount.get("readOnly") is True
        environment = {**k8s_environment(base), **{v["name"]: v["value"] for v in container["env"]}}
        assert_internal_tls(settings_from(environment), filename)
        for variable, file in INTERNAL_TLS_FILES.items():
            assert environment[variable] == f"{mount['mountPath']}/{file}", f"{filename}: {variable}"
        for probe_name, probe in _probes(container).items():
            assert probe_name in base and probe["grpc"] is None, f"{filename}: {probe_name} replaces a gRPC probe"
            check_command(probe["exec"]["command"], f"{filename} {probe_name}")
            assert probe["exec"]["command"] == ["python", "-m", "services.worker_probe"]
    assert patched == {"gateway", "coordinator", "worker"}
    assert set(_probes(k8s_container("worker"))) == set(_probes(yaml.safe_load(
        (K8S_INTERNAL_TLS / "worker.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]))


def duration_seconds(value: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", value)
    assert parts and "".join(number + unit for number, unit in parts) == value, value
    return sum(float(number) * units[unit] for number, unit in parts)


def test_stop_grace_exceeds_worker_grace() -> None:
    """docker stop / pod deletion must leave a bound worker its GLS_WORKER_GRACE_S to finish running requests."""
    for name in ("worker", "worker-gpu", "coordinator"):
        service = compose_services()[name]
        grace = settings_from(compose_environment(service)).worker_grace_s
        assert duration_seconds(service.get("stop_grace_period", "10s")) > grace, name
    pod = k8s_objects("Deployment")["worker"]["spec"]["template"]["spec"]
    grace = settings_from(k8s_environment(k8s_container("worker"))).worker_grace_s
    assert pod.get("terminationGracePeriodSeconds", 30) > grace


def test_compose_gpu_worker() -> None:
    worker = compose_services()["worker-gpu"]
    assert worker["profiles"] == ["gpu"]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile.cuda"
    assert settings_from(compose_environment(worker)).device == "cuda"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices), devices


def test_compose_coordinator() -> None:
    coordinator = compose_services()["coordinator"]
    assert coordinator["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "ports" not in coordinator


def test_prometheus_scrapes_gateway_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    gateway_port = settings_from(compose_environment(compose_services()["gateway"])).gateway_port
    jobs = [job for job in config["scrape_configs"] if job.get("metrics_path", "/metrics") == "/metrics"]
    targets = {target for job in jobs for static in job.get("static_configs", []) for target in static["targets"]}
    assert f"gateway:{gateway_port}" in targets, targets
    assert "gateway" in compose_services()
    prometheus = compose_services().get("prometheus")
    if prometheus is not None:
        assert any(str(volume).startswith("./deploy/prometheus.yml:") for volume in prometheus["volumes"])


# ------------------------------------------------------------------------------------------ Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), arguments
    return value


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored_by_docker(relative: str) -> bool:
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            hit = any(fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            ignored = not negate
    return ignored


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_installs_pinned_torch_then_project(variant: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[variant])
    assert instructions[0][0] in ("FROM", "ARG"), "a Dockerfile starts with FROM"
    base = next(arguments for keyword, arguments in instructions if keyword == "FROM")
    # a FROM ${ARG} names its default in an ARG before it (the base is a build argument)
    defaults = dict(arguments.split("=", 1) for keyword, arguments in instructions[:instructions.index(("FROM", base))]
                    if keyword == "ARG" and "=" in arguments)
    base = re.sub(r"\$\{(\w+)\}", lambda match: defaults.get(match.group(1), match.group(0)), base)
    assert re.match(r"python:3\.11[.-]", base) or "3.11" in base, f"base image {base} is not Python 3.11"
    runs = [(index, arguments) for index, (keyword, arguments) in enumerate(instructions) if keyword == "RUN"]
    torch_runs = [index for index, arguments in runs if re.search(r"pip install\b.*\btorch==", arguments)]
    project_runs = [index for index, arguments in runs
                    if re.search(r"""pip install\b[^&;|]*\s["']?\.\[services\]["']?(\s|$)""", arguments)]
    assert len(torch_runs) == 1 and len(project_runs) == 1, (torch_runs, project_runs)
    torch_line = instructions[torch_runs[0]][1]
    assert f'"{torch_pin()}"' in torch_line or f" {torch_pin()} " in f" {torch_line} ", \
        f"{variant} image must install {torch_pin()} (the pin in pyproject.toml): {torch_line}"
    assert torch_runs[0] < project_runs[0], "torch must be installed before the project"
    first_source_copy = min(index for index, (keyword, arguments) in enumerate(instructions)
                            if keyword == "COPY" and ("gls_core" in arguments or "services" in arguments))
    assert torch_runs[0] < first_source_copy, "install torch before copying the sources, so its layer is cached"
    index_args = {arguments.split("=", 1)[0]: arguments.split("=", 1)[1] for keyword, arguments in instructions
                  if keyword == "ARG" and "=" in arguments}
    index = index_args.get("TORCH_INDEX_URL", "")
    assert "${TORCH_INDEX_URL}" in torch_line or "$TORCH_INDEX_URL" in torch_line
    if variant == "cpu":
        assert index == "https://download.pytorch.org/whl/cpu", index
    else:
        assert "whl/cpu" not in index, f"the CUDA image must not use the CPU wheel index: {index}"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_runtime(variant: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[variant])
    keywords = [keyword for keyword, _ in instructions]
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    last_run = max(index for index, keyword in enumerate(keywords) if keyword == "RUN")
    last_user = max(index for index, keyword in enumerate(keywords) if keyword == "USER")
    assert last_user > last_run, "switch to the non-root user after the last RUN"
    environment = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert re.search(r"\bGLS_DATA_DIR=/data\b", environment), "ENV GLS_DATA_DIR=/data is missing"
    stray = sorted(set(re.findall(r"\b(GLS_[A-Z_]+)=", environment)) - set(ENVIRONMENT_VARIABLES))
    assert not stray, f"not Settings fields: {stray}"
    assert "HEALTHCHECK" not in keywords, "one image serves three services: health checks belong in compose/k8s"
    defaults = default_settings()
    exposed = {int(port.split("/")[0]) for keyword, arguments in instructions if keyword == "EXPOSE"
               for port in arguments.split()}
    assert exposed == {defaults.gateway_port, defaults.worker_port, defaults.certifier_port}, exposed
    # ENTRYPOINT runs tini and the entrypoint script, which execs CMD (or the command compose/k8s give).
    entrypoint = exec_form(next(arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT"))
    command = exec_form(next(arguments for keyword, arguments in instructions if keyword == "CMD"))
    copies = {arguments.split()[-1]: arguments.split()[-2] for keyword, arguments in instructions if keyword == "COPY"}
    script = [part for part in entrypoint if part not in ("tini", "--")]
    assert len(script) == 1, entrypoint
    source = next(src for dest, src in copies.items() if Path(dest).name == script[0])
    assert source == "deploy/docker-entrypoint.sh" and (ROOT / source).is_file()
    assert any("--chmod=0755" in arguments for keyword, arguments in instructions
               if keyword == "COPY" and source in arguments), "the entrypoint script must be executable"
    assert re.search(r"apt-get install[^&]*\btini\b", " ".join(a for k, a in instructions if k == "RUN"))
    check_command(command, f"{DOCKERFILES[variant].name} CMD")


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_copies_exist_and_are_not_dockerignored(variant: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[variant])
    copies = [arguments.split() for keyword, arguments in instructions if keyword in ("COPY", "ADD")]
    sources = [source for parts in copies for source in [p for p in parts if not p.startswith("--")][:-1]]
    assert {"pyproject.toml", "README.md", "gls_core", "services"} <= set(sources), sources
    for source in sources:
        assert (ROOT / source).exists(), f"{variant}: COPY {source} does not exist"
        assert not ignored_by_docker(source), f"{variant}: COPY {source} is excluded by .dockerignore"
    # the build context must not carry the virtualenv, git history or run outputs
    for heavy in (".venv", ".git", "runs", "tests"):
        assert ignored_by_docker(heavy), f".dockerignore should exclude {heavy}"


def test_project_script_gls_exists() -> None:
    """`gls` is the core command line; the services join it through the gls.cli entry point."""
    target = pyproject()["project"]["scripts"]["gls"]
    module, _, attribute = target.partition(":")
    assert module == "gls_core.cli" and attribute == "main"
    assert callable(getattr(importlib.import_module(module), attribute))
    plugin = pyproject()["project"]["entry-points"]["gls.cli"]["services"]
    plugin_module, _, plugin_function = plugin.partition(":")
    assert callable(getattr(importlib.import_module(plugin_module), plugin_function))


def test_entrypoint_script_sets_worker_address() -> None:
    """deploy/docker-entrypoint.sh: a worker without GLS_WORKER_ADVERTISE advertises its own IP and port."""
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK), f"{ENTRYPOINT_SCRIPT} must be executable"
    subprocess.run(["sh", "-n", str(ENTRYPOINT_SCRIPT)], check=True)
    base = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}

    def advertised(environment: dict[str, str], *service: str) -> str:
        # The probe stands in for the service: the script decides on its arguments, then execs them.
        probe = ["sh", "-c", 'printf %s "${GLS_WORKER_ADVERTISE:-}"', *service]
        result = subprocess.run(["sh", str(ENTRYPOINT_SCRIPT), *probe], env={**base, **environment},
                                capture_output=True, text=True, timeout=30, check=True)
        return result.stdout

    default_port = default_settings().worker_port
    assert re.fullmatch(rf"[^\s:]+:{default_port}", advertised({}, "python", "-m", "services.bound_worker"))
    assert advertised({"GLS_WORKER_PORT": "6000"}, "python", "-m", "services.bound_worker").endswith(":6000")
    assert advertised({"GLS_WORKER_ADVERTISE": "w1:7"}, "python", "-m", "services.bound_worker") == "w1:7"
    assert re.fullmatch(rf"[^\s:]+:{default_port}", advertised({}, "gls", "worker"))
    assert advertised({}, "python", "-m", "services.gateway") == ""
    assert advertised({}, "gls", "gateway") == ""


def test_command_check_knows_gls_verbs() -> None:
    """`gls worker|coordinator|gateway` are equivalent commands; the check rejects what does not exist."""
    for argv in (["gls", "worker"], ["gls", "coordinator"], ["gls", "gateway"], ["gls", "--help"]):
        check_command(argv, "self-test")
    for argv in (["gls", "no-such-verb"], ["python", "-m", "services.no_such_service"], ["sleep", "1"]):
        with pytest.raises(AssertionError):
            check_command(argv, "self-test")


def _declared_closure(*extras: str) -> set[str]:
    """Distributions `pip install .[extras]` brings: the project's dependencies and theirs (installed metadata)."""
    project = pyproject()["project"]
    pending = [requirement_name(req) for req in project["dependencies"]]
    pending += [requirement_name(req) for extra in extras for req in project["optional-dependencies"][extra]]
    closure: set[str] = set()
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending.extend(requirement_name(req) for req in requires if "extra ==" not in req.replace('"', "'"))
    return closure


def _runtime_imports(path: Path) -> set[str]:
    """Top-level modules a file imports, without `if TYPE_CHECKING:` blocks and `try/except ImportError` fallbacks."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt] | list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Try) and any(
                    handler.type is not None and re.search(r"ImportError|ModuleNotFoundError",
                                                           ast.unparse(handler.type))
                    for handler in node.handlers):
                visit(node.handlers)  # type: ignore[arg-type]
                visit(node.orelse)
                visit(node.finalbody)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
            visit(list(ast.iter_child_nodes(node)))

    visit(ast.parse(path.read_text()).body)
    return found


@pytest.mark.parametrize(("packages", "extras"), [(("gls_core",), ()), (("gls_core", "services"), ("services",))],
                         ids=["core", "services"])
def test_pip_install_brings_every_import(packages: tuple[str, ...], extras: tuple[str, ...]) -> None:
    """`pip install .` must bring every third-party module gls_core imports, `.[services]` those of the services too.

    The image runs `pip install ".[services]"`; a researcher who only trains installs the core alone.
    """
    first_party = {"gls_core", "services", "__future__"}
    # services/protogen.py regenerates the committed stubs with grpcio-tools: a development tool, not run in images.
    build_tools = {ROOT / "services" / "protogen.py"}
    distributions = importlib.metadata.packages_distributions()
    closure = _declared_closure(*extras)
    missing: dict[str, set[str]] = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path in build_tools:
                continue
            for module in _runtime_imports(path) - first_party - set(sys.stdlib_module_names):
                providers = {canonical(name) for name in distributions.get(module, [])}
                if not providers & closure:
                    label = "/".join(sorted(providers)) or f"<no installed distribution provides {module}>"
                    missing.setdefault(label, set()).add(str(path.relative_to(ROOT)))
    listing = "\n".join(f"  {name}: {sorted(files)}" for name, files in sorted(missing.items()))
    assert not missing, f"imported but not in pyproject.toml's dependencies (extras {extras}) nor required by one:\n" \
                        f"{listing}"


# ---------------------------------------------------------------------------------------------- gateway


def _gateway_string_constants() -> set[str]:
    spec = importlib.util.find_spec("services.gateway")
    assert spec is not None and spec.submodule_search_locations is not None, \
        "the services.gateway package does not exist yet"
    strings: set[str] = set()
    for location in spec.submodule_search_locations:
        for path in Path(location).rglob("*.py"):
            strings.update(node.value for node in ast.walk(ast.parse(path.read_text()))
                           if isinstance(node, ast.Constant) and isinstance(node.value, str))
    return strings


def deploy_http_paths() -> set[str]:
    """Every gateway path a deployment file calls: compose healthcheck, k8s probes, Prometheus."""
    paths = {"/metrics"} | {job.get("metrics_path", "/metrics") for job in
                            yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]}
    program = python_c_source(healthcheck_argv(compose_services()["gateway"]["healthcheck"]["test"]))
    paths.update(urlsplit(url).path for url in re.findall(r"http://[^'\"]+", program))
    for container in k8s_containers():
        for probe in _probes(container).values():
            if "httpGet" in probe:
                paths.add(probe["httpGet"]["path"])
    return paths


def test_deploy_files_call_only_gateway_routes() -> None:
    paths = deploy_http_paths()
    assert {"/healthz", "/readyz", "/metrics"} <= paths, paths
    routes = _gateway_string_constants()
    missing = sorted(path for path in paths if path not in routes)
    assert not missing, f"the deployment files call {missing}, which services.gateway does not define"


# ------------------------------------------------------------------------------------------- Kubernetes

API_VERSIONS = {
    "Namespace": "v1", "ConfigMap": "v1", "Secret": "v1", "Service": "v1", "PersistentVolumeClaim": "v1",
    "ServiceAccount": "v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2", "PodDisruptionBudget": "policy/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
}
WORKLOADS = ("Deployment", "StatefulSet")
# Fields of the Kubernetes API objects used here; a misspelt key would be silently dropped by some tools.
POD_SPEC_KEYS = {
    "containers", "initContainers", "volumes", "nodeSelector", "tolerations", "affinity", "securityContext",
    "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks", "terminationGracePeriodSeconds",
    "restartPolicy", "priorityClassName", "topologySpreadConstraints", "imagePullSecrets", "hostname", "subdomain",
    "runtimeClassName", "dnsPolicy",
}
CONTAINER_KEYS = {
    "name", "image", "imagePullPolicy", "command", "args", "workingDir", "ports", "env", "envFrom", "resources",
    "volumeMounts", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "securityContext",
    "terminationMessagePath", "terminationMessagePolicy", "stdin", "tty", "resizePolicy", "restartPolicy",
}
PROBE_KEYS = {
    "exec", "httpGet", "tcpSocket", "grpc", "initialDelaySeconds", "periodSeconds", "timeoutSeconds",
    "successThreshold", "failureThreshold", "terminationGracePeriodSeconds",
}
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


@functools.cache
def k8s_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    documents = []
    for path in sorted(K8S.glob("*.y*ml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return tuple(documents)


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {document["metadata"]["name"]: document for _, document in k8s_documents() if document["kind"] == kind}


def k8s_workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, document in k8s_documents():
        if document["kind"] in WORKLOADS:
            yield f"{document['kind']}/{document['metadata']['name']}", document


def k8s_containers() -> Iterator[dict[str, Any]]:
    for _, workload in k8s_workloads():
        yield from workload["spec"]["template"]["spec"]["containers"]


def k8s_container(deployment: str) -> dict[str, Any]:
    containers = k8s_objects("Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: container[name] for name in PROBES if name in container}


_K8S_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def k8s_environment(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom, then env with $(VAR) expanded.

    Secrets are the operator's (``K8S_SECRETS``), referenced key by key, so a missing one stops the pod.
    """
    configmaps = k8s_objects("ConfigMap")
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom {source}: reference secrets key by key"
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"{container['name']}: envFrom ConfigMap {name} is not defined"
        environment.update(configmaps[name]["data"])
    fields = {"status.podIP": "10.1.2.3", "metadata.name": "pod-0", "metadata.namespace": NAMESPACE,
              "spec.nodeName": "node-0", "status.hostIP": "10.0.0.1"}
    for variable in container.get("env", []):
        if "value" in variable:
            value = str(variable["value"])
            undefined = [name for name in _K8S_REFERENCE.findall(value) if name not in environment]
            assert not undefined, f"{container['name']}: {variable['name']} uses $({undefined[0]}) before it is defined"
            environment[variable["name"]] = _K8S_REFERENCE.sub(lambda match: environment[match.group(1)], value)
        else:
            reference = variable["valueFrom"]
            if "fieldRef" in reference:
                environment[variable["name"]] = fields[reference["fieldRef"]["fieldPath"]]
            elif "configMapKeyRef" in reference:
                key = reference["configMapKeyRef"]
                environment[variable["name"]] = configmaps[key["name"]]["data"][key["key"]]
            elif "secretKeyRef" in reference:
                key = reference["secretKeyRef"]
                assert not key.get("optional"), f"{container['name']}: {variable['name']} must not start without it"
                assert key["key"] in K8S_SECRETS.get(key["name"], {}), \
                    f"{container['name']}: Secret {key['name']} key {key['key']} is not one deploy/README.md creates"
                environment[variable["name"]] = K8S_SECRETS[key["name"]][key["key"]]
            else:
                raise AssertionError(f"unsupported valueFrom {reference}")
    return environment


def declared_ports(container: dict[str, Any]) -> dict[str | int, int]:
    """containerPort by name and by number."""
    ports: dict[str | int, int] = {}
    for port in container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            assert len(port["name"]) <= 15 and re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", port["name"])
            ports[port["name"]] = port["containerPort"]
    return ports


def test_k8s_documents_are_well_formed() -> None:
    documents = k8s_documents()
    assert documents, "no manifests in deploy/k8s"
    seen = set()
    for filename, document in documents:
        kind = document.get("kind")
        metadata = document.get("metadata") or {}
        where = f"{filename}: {kind}/{metadata.get('name')}"
        assert document.get("apiVersion") and kind and metadata.get("name"), f"{where}: apiVersion/kind/name"
        assert API_VERSIONS.get(kind) == document["apiVersion"], f"{where}: apiVersion {document['apiVersion']}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", metadata["name"]), where
        if kind != "Namespace":
            assert metadata.get("namespace") == NAMESPACE, f"{where}: namespace must be {NAMESPACE}"
        assert (kind, metadata["name"]) not in seen, f"{where} is defined twice"
        seen.add((kind, metadata["name"]))
    assert NAMESPACE in k8s_objects("Namespace")


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == NAMESPACE
    files = {path.name for path in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_k8s_workloads_structure() -> None:
    for where, workload in k8s_workloads():
        spec = workload["spec"]
        template = spec["template"]
        labels = template["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), f"{where}: selector must match its pods"
        pod = template["spec"]
        assert set(pod) <= POD_SPEC_KEYS, f"{where}: unknown pod spec keys {set(pod) - POD_SPEC_KEYS}"
        volumes = {volume["name"] for volume in pod.get("volumes", [])}
        volumes |= {claim["metadata"]["name"] for claim in spec.get("volumeClaimTemplates", [])}
        names = [container["name"] for container in pod["containers"]]
        assert len(names) == len(set(names)), where
        for container in pod["containers"]:
            unknown = set(container) - CONTAINER_KEYS
            assert not unknown, f"{where}: unknown container keys {unknown}"
            assert container.get("image"), where
            ports = declared_ports(container)
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: volumeMount {mount['name']} has no volume"
            for probe_name, probe in _probes(container).items():
                assert set(probe) <= PROBE_KEYS, f"{where} {probe_name}: unknown keys {set(probe) - PROBE_KEYS}"
                handlers = [key for key in ("exec", "httpGet", "tcpSocket", "grpc") if key in probe]
                assert len(handlers) == 1, f"{where} {probe_name}: exactly one handler"
                handler = probe[handlers[0]]
                if handlers[0] == "grpc":
                    assert isinstance(handler["port"], int), f"{where} {probe_name}: a grpc probe port is a number"
                if handlers[0] != "exec":
                    assert handler["port"] in ports, f"{where} {probe_name}: port {handler['port']} is not declared"
        if workload["kind"] == "StatefulSet":
            assert spec["serviceName"] in k8s_objects("Service"), f"{where}: serviceName has no Service"


def test_k8s_services_select_pods_and_ports() -> None:
    workloads = list(k8s_workloads())
    services = k8s_objects("Service")
    assert {"redis", "gateway"} <= set(services)
    for name, service in services.items():
        selector = service["spec"]["selector"]
        matches = [(where, workload) for where, workload in workloads
                   if selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {[where for where, _ in matches]}"
        containers = matches[0][1]["spec"]["template"]["spec"]["containers"]
        ports: dict[str | int, int] = {}
        for container in containers:
            ports.update(declared_ports(container))
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports, f"Service {name} port {port.get('name')}: targetPort {target} is not declared"


def test_k8s_commands_exist_in_the_code() -> None:
    for where, workload in k8s_workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container["image"].split(":")[0] != "gls":
                continue
            argv = [*container.get("command", []), *container.get("args", [])]
            check_command(argv, f"deploy/k8s {where}")


def test_k8s_environment_is_settings() -> None:
    """Every GLS_* variable (ConfigMap, env) is a Settings field and validates; ports agree with it."""
    for name, document in k8s_objects("ConfigMap").items():
        stray = sorted(set(document.get("data", {})) - set(ENVIRONMENT_VARIABLES))
        assert not stray, f"ConfigMap {name}: {stray} are not GLS settings"
    for where, workload in k8s_workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container["image"].split(":")[0] != "gls":
                continue
            environment = k8s_environment(container)
            stray = sorted(key for key in environment if key.startswith("GLS_") and key not in ENVIRONMENT_VARIABLES)
            assert not stray, f"{where}: {stray} are not GLS settings"
            settings = settings_from(environment)
            assert settings.data_dir is not None
            assert str(settings.data_dir) in {mount["mountPath"] for mount in container.get("volumeMounts", [])}, \
                f"{where}: GLS_DATA_DIR is not a mounted volume"
            redis = urlsplit(settings.redis_url)
            assert redis.hostname in k8s_objects("Service"), f"{where}: Redis host {redis.hostname} is no Service"
            redis_ports = [port["port"] for port in k8s_objects("Service")[str(redis.hostname)]["spec"]["ports"]]
            assert (redis.port or 6379) in redis_ports


def test_k8s_gateway() -> None:
    container = k8s_container("gateway")
    settings = settings_from(k8s_environment(container))
    ports = declared_ports(container)
    assert ports["http"] == settings.gateway_port and ports["grpc"] == settings.certifier_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert ports[probe["httpGet"]["port"]] == settings.gateway_port
    service_ports = {port["name"]: port for port in k8s_objects("Service")["gateway"]["spec"]["ports"]}
    assert service_ports["http"]["port"] == settings.gateway_port
    assert service_ports["grpc"]["port"] == settings.certifier_port
    assert "GLS_TOKENS" in k8s_environment(container) and settings.tenants_by_token, "the gateway needs GLS_TOKENS"
    annotations = k8s_objects("Deployment")["gateway"]["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/port") == str(settings.gateway_port)
    assert annotations.get("prometheus.io/path") == "/metrics"


def test_k8s_workers() -> None:
    deployment = k8s_objects("Deployment")["worker"]
    container = k8s_container("worker")
    environment = k8s_environment(container)
    settings = settings_from(environment)
    assert isinstance(deployment["spec"]["replicas"], int) and deployment["spec"]["replicas"] >= 1
    assert settings.device == "cuda" and container["image"].endswith("-cuda")
    assert declared_ports(container)[settings.worker_port] == settings.worker_port
    for name in ("livenessProbe", "readinessProbe"):
        assert container[name]["grpc"]["port"] == settings.worker_port, name
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    pod = deployment["spec"]["template"]["spec"]
    assert pod.get("nodeSelector"), "GPU workers need a nodeSelector for GPU nodes"
    assert any(toleration.get("key") == "nvidia.com/gpu" for toleration in pod.get("tolerations", []))
    advertise = next(variable for variable in container["env"] if variable["name"] == "GLS_WORKER_ADVERTISE")
    pod_ip = next(variable for variable in container["env"]
                  if variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP")
    assert advertise["value"] == f"$({pod_ip['name']}):{settings.worker_port}"
    assert settings.advertised_worker_address == f"10.1.2.3:{settings.worker_port}"


def memory_bytes(value: str) -> int:
    """A Kubernetes quantity (4Gi, 512Mi) or a redis-server size (2gb, 512mb, 1g) in bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]i|[kmgt]b?)?", value.strip(), flags=re.I)
    assert match, value
    unit = (match.group(2) or "").lower().removesuffix("b").removesuffix("i")
    return int(match.group(1)) * 1024 ** " kmgt".index(unit or " ")


def redis_container() -> tuple[dict[str, Any], list[str]]:
    statefulset = k8s_objects("StatefulSet")["redis"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container, [*container.get("command", []), *container.get("args", [])]


def test_k8s_redis() -> None:
    statefulset = k8s_objects("StatefulSet")["redis"]
    container, argv = redis_container()
    assert [option(argv, name) for name in DURABLE_AOF[::2]] == list(DURABLE_AOF[1::2])
    directory = option(argv, "--dir") if "--dir" in argv else "/data"
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    assert any(mount["mountPath"] == directory and mount["name"] in claims for mount in container["volumeMounts"]), \
        "the append-only file must be on the persistent volume"


def test_k8s_redis_password_from_a_secret_and_memory_ceiling() -> None:
    container, argv = redis_container()
    environment = k8s_environment(container)
    password = option(argv, "--requirepass")
    assert password == "$(REDIS_PASSWORD)", "the kubelet expands $(VAR) in args: the password stays in the Secret"
    source = next(variable for variable in container["env"] if variable["name"] == "REDIS_PASSWORD")
    assert source["valueFrom"]["secretKeyRef"] == {"name": "gls-redis", "key": "REDIS_PASSWORD"}
    assert _K8S_REFERENCE.sub(lambda match: environment[match.group(1)], password) == \
        K8S_SECRETS["gls-redis"]["REDIS_PASSWORD"]
    assert option(argv, "--maxmemory-policy") == "noeviction", "job state must never be evicted"
    ceiling, limit = memory_bytes(option(argv, "--maxmemory")), memory_bytes(container["resources"]["limits"]["memory"])
    assert ceiling <= limit * 3 // 4, "leave the AOF rewrite (a fork) headroom below the memory limit"
    assert environment["REDISCLI_AUTH"] == K8S_SECRETS["gls-redis"]["REDIS_PASSWORD"]
    for name in ("readinessProbe", "livenessProbe"):
        assert container[name]["exec"]["command"] == ["sh", "-c", "redis-cli ping | grep -q PONG"], name


def test_k8s_ships_no_secret_values() -> None:
    """Secrets are created by the operator (deploy/README.md shows how); the manifests only reference them."""
    assert not k8s_objects("Secret"), "a Secret in deploy/k8s carries a value everyone who has the repository knows"
    readme = (DEPLOY / "README.md").read_text()
    referenced = set()
    for where, workload in k8s_workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            k8s_environment(container)  # every reference is to a documented secret and key, none optional
            for variable in container.get("env", []):
                if SECRET_LIKE.search(variable["name"]) and "value" in variable:
                    assert _K8S_REFERENCE.fullmatch(str(variable["value"])), \
                        f"{where}: {variable['name']} has a literal value; take it from a Secret"
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    referenced.add((reference["name"], reference["key"]))
    assert referenced == {(name, key) for name, keys in K8S_SECRETS.items() for key in keys}
    for name, key in referenced:
        assert re.search(rf"kubectl -n {NAMESPACE} create secret generic {name} --from-literal={key}=", readme), \
            f"deploy/README.md does not say how to create Secret {name} ({key})"


def test_every_redis_url_carries_the_password() -> None:
    """Every service's Redis URL (as Settings reads it, as redis-py parses it) has the password Redis requires."""
    password = COMPOSE_SECRETS["REDIS_PASSWORD"]
    urls = {f"compose {name}": (settings_from(compose_environment(service)).redis_url, password)
            for name, service in gls_compose_services().items()}
    for where, workload in k8s_workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container["image"].split(":")[0] == "gls":
                urls[f"k8s {where}"] = (settings_from(k8s_environment(container)).redis_url,
                                        K8S_SECRETS["gls-redis"]["REDIS_PASSWORD"])
    assert {"compose gateway", "compose coordinator", "compose worker", "k8s Deployment/gateway",
            "k8s Deployment/coordinator", "k8s Deployment/worker"} <= set(urls), sorted(urls)
    for where, (url, expected) in urls.items():
        parsed = redis.connection.parse_url(url)
        assert parsed.get("password") == expected, f"{where}: {url} does not carry the Redis password"
        assert parsed.get("host") == "redis", where


def test_k8s_coordinator() -> None:
    container = k8s_container("coordinator")
    assert container["args"] == ["python", "-m", "services.coordinator"]
    assert "ports" not in container


def test_k8s_autoscaler_targets_workers() -> None:
    for name, autoscaler in k8s_objects("HorizontalPodAutoscaler").items():
        target = autoscaler["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in k8s_objects("Deployment"), name
        assert 1 <= autoscaler["spec"]["minReplicas"] <= autoscaler["spec"]["maxReplicas"]
        resources = {metric["resource"]["name"] for metric in autoscaler["spec"].get("metrics", [])
                     if metric["type"] == "Resource"}
        requests = k8s_container(target["name"])["resources"]["requests"]
        for resource in resources:
            assert resource in requests, f"HPA {name} scales on {resource}, which {target['name']} does not request"


def test_k8s_tokens_come_from_a_secret() -> None:
    assert settings_from(K8S_SECRETS["gls-tokens"]).tenants_by_token
    with_tokens = {where for where, workload in k8s_workloads() for container in
                   workload["spec"]["template"]["spec"]["containers"] if "GLS_TOKENS" in k8s_environment(container)}
    assert with_tokens == {"Deployment/gateway"}, "the tenants' tokens only where they are checked"
    configmap_keys = {key for configmap in k8s_objects("ConfigMap").values() for key in configmap["data"]}
    assert "GLS_TOKENS" not in configmap_keys, "tokens belong in the Secret, not a ConfigMap"
    assert all(isinstance(value, str) for configmap in k8s_objects("ConfigMap").values()
               for value in configmap["data"].values()), "ConfigMap values must be strings"


def test_images_match_project_version() -> None:
    version = pyproject()["project"]["version"]
    images = {str(service["image"]) for service in gls_compose_services().values()}
    images |= {container["image"] for container in k8s_containers() if container["image"].startswith("gls:")}
    assert images == {f"gls:{version}", f"gls:{version}-cuda"}, images


# ------------------------------------------------------------------------------------------- listeners


def container_module(argv: list[str]) -> str | None:
    """The service a container command runs: ``python -m MODULE`` or ``gls worker|gateway|coordinator``."""
    if argv[:2] in (["python", "-m"], ["python3", "-m"]):
        return argv[2]
    verbs = {"worker": "services.bound_worker", "gateway": "services.gateway", "coordinator": "services.coordinator"}
    return verbs.get(argv[1]) if argv[:1] == ["gls"] and len(argv) > 1 else None


def test_listeners_default_to_loopback_and_containers_open_them() -> None:
    """Outside containers nothing listens beyond loopback unless configured; in containers each listener is
    configured to 0.0.0.0, or the published ports, Services and probes would reach nothing."""
    assert {name for name in Settings.model_fields if name.endswith("_host")} == set(BIND_SETTINGS.values()), \
        "a new listener needs its bind-address setting in BIND_SETTINGS"
    defaults = default_settings()
    for field in BIND_SETTINGS.values():
        assert ipaddress.ip_address(getattr(defaults, field)).is_loopback, f"{field} must default to loopback"
    configured: dict[str, str] = {}
    for name, service in gls_compose_services().items():
        module = container_module(compose_command(service))
        if module in BIND_SETTINGS:
            configured[f"compose {name}"] = getattr(settings_from(compose_environment(service)), BIND_SETTINGS[module])
    for where, workload in k8s_workloads():
        for container in workload["spec"]["template"]["spec"]["containers"]:
            module = container_module([*container.get("command", []), *container.get("args", [])])
            if container["image"].split(":")[0] == "gls" and module in BIND_SETTINGS:
                configured[f"k8s {where}"] = getattr(settings_from(k8s_environment(container)), BIND_SETTINGS[module])
    assert {"compose gateway", "compose worker", "compose worker-gpu", "k8s Deployment/gateway",
            "k8s Deployment/worker"} <= set(configured), configured
    closed = {where: host for where, host in configured.items() if host != "0.0.0.0"}
    assert not closed, f"containers whose listener is not opened to 0.0.0.0: {closed}"


def non_loopback_addresses() -> list[str]:
    """This machine's own IPv4 addresses besides loopback: those a listener on 0.0.0.0 would also serve."""
    candidates: set[str] = set()
    with contextlib.suppress(OSError):
        candidates.update(socket.gethostbyname_ex(socket.gethostname())[2])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, contextlib.suppress(OSError):  # no route
        probe.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it picks the outgoing interface's address
        candidates.add(probe.getsockname()[0])
    local = []
    for address in sorted(candidates):
        if ipaddress.ip_address(address).is_loopback:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((address, 0))  # only the machine's own addresses can be bound
            except OSError:
                continue
        local.append(address)
    return local


def reachable(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) == 0


def assert_loopback_only(port: int, addresses: list[str]) -> None:
    assert reachable("127.0.0.1", port)
    for address in addresses:
        assert not reachable(address, port), f"port {port} answers on {address}: it listens beyond loopback"


def test_wildcard_listener_is_reachable_on_the_other_addresses() -> None:
    """The control of the loopback tests below: a socket on 0.0.0.0 does answer on those addresses."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert reachable("127.0.0.1", port)
        assert all(reachable(address, port) for address in non_loopback_addresses())


def test_worker_process_with_default_settings_listens_on_loopback_only(tmp_path: Path) -> None:
    """`python -m services.bound_worker` with no bind address configured: 127.0.0.1 serves, no other address does."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name not in ("GLS_WORKER_HOST", "GLS_WORKER_ADVERTISE")}
    env.update(GLS_WORKER_PORT=str(port), GLS_WORKER_REGISTER="false", GLS_THREADS="1", GLS_WORKER_GRACE_S="0")
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.bound_worker"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        assert_loopback_only(port, non_loopback_addresses())
        # what the server reports it bound (the check that remains on a machine with loopback only)
        assert f"listening on 127.0.0.1:{port} " in log_path.read_text(), log_path.read_text()
    finally:
        process.terminate()
        process.wait(30)


def test_gateway_with_default_settings_listens_on_loopback_only(tmp_path: Path) -> None:
    """REST and the gRPC Certifier of a gateway with no bind address configured: loopback only."""
    from services.gateway.server import serve

    server = RedisServer(tmp_path / "redis").start()
    values = {"redis_url": server.url, "gateway_port": 0, "certifier_port": 0, "tokens": "t=tenant"}
    settings = Settings(**values)  # type: ignore[arg-type]
    assert settings.gateway_host == default_settings().gateway_host
    running = serve(settings)
    try:
        rest_port = int(urlsplit(running.url).port or 0)
        certifier_port = int(running.certifier_address.rsplit(":", 1)[1])
        assert urlsplit(running.url).hostname == "127.0.0.1"
        addresses = non_loopback_addresses()
        for port in (rest_port, certifier_port):
            assert_loopback_only(port, addresses)
    finally:
        running.stop(grace=0)
        server.stop()
