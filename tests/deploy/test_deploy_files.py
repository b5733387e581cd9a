"""deploy/: the compose file, the HAProxy configuration and the Kubernetes manifests.

Checked without Docker or a cluster: yamllint on every YAML file,
kubernetes-validate (strict, against its bundled schemas) on the manifests,
``haproxy -c`` on the HAProxy configuration. Then what they say about the hub
is held against the hub itself: every hub's command line and environment are
read by the hub's own configuration loader, its doors' ports are the ones the
load balancers and probes target, and every environment variable they set is
one of the hub's options.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from cli_helpers import Procs, timeout
from yamllint import linter
from yamllint.config import YamlLintConfig

from hub.config import OPTIONS, Config, load
from hub.core.tokens import SECRET_FILE_ENV

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
HAPROXY_CFG = DEPLOY / "haproxy.cfg"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
YAMLLINT = YamlLintConfig(
    "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"
)
# The door each port name means, in every file: chat (-h), devices
# (--device-address), stream (--stream-address).
DOORS = {"chat": "host", "devices": "device_address", "stream": "stream_address"}
PUBLIC_PORTS = {"chat": 6262, "devices": 50051, "stream": 8080}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def hub_config(argv: list[str], env: dict[str, str]) -> Config:
    """What a hub started with ``argv`` and ``env`` runs with (the hub's own loader)."""
    assert set(env) <= ENV_NAMES, set(env) - ENV_NAMES
    config = load(argv, env)
    assert config.server, argv
    return config


def hub_doors(config: Config) -> dict[str, int]:
    """The port each door of the hub listens on."""
    return {door: int(getattr(config, attr).rpartition(":")[2]) for door, attr in DOORS.items()}


# Every environment variable the hub reads: one per option.
ENV_NAMES = {option.env for option in OPTIONS}


# -- every file ---------------------------------------------------------------


def test_there_are_deployment_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"compose.yaml", "k8s/hub.yaml", "k8s/service.yaml", "k8s/redis.yaml"} <= names
    assert "k8s/secret.yaml" in names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yamllint(path: Path) -> None:
    problems = list(linter.run(path.read_text(), YAMLLINT, str(path)))
    assert not problems, "\n".join(f"{path}:{p.line}:{p.column}: {p.message}" for p in problems)


# -- Kubernetes ---------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest's objects by (kind, name)."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in documents(path):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_are_valid(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_kubernetes_adds_no_hub_variables_of_its_own() -> None:
    # Service links would give every pod HUB_SERVICE_HOST, HUB_PORT... (the
    # Service is named hub), which the hub refuses as unknown options.
    pod = k8s_objects()["Deployment", "hub"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def hub_container() -> dict[str, Any]:
    deployment = k8s_objects()["Deployment", "hub"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, a value standing in for each secret's."""
    return {e["name"]: e.get("value", "from-a-secret") for e in container["env"]}


def test_kubernetes_runs_three_hubs_on_redis_with_the_ports_the_hub_serves() -> None:
    objects = k8s_objects()
    deployment = objects["Deployment", "hub"]
    assert deployment["spec"]["replicas"] == 3
    container = hub_container()
    config = hub_config(container["args"], container_env(container))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == hub_doors(config)

    # The Service: a load balancer with the three public ports, each to its door.
    service = objects["Service", "hub"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        name: (port, name) for name, port in PUBLIC_PORTS.items()
    }

    # --redis names the Redis Service and its port.
    match = re.fullmatch(r"redis://([\w.-]+):(\d+)", config.redis)
    assert match, config.redis
    redis_service = objects["Service", match[1]]
    assert int(match[2]) in {p["port"] for p in redis_service["spec"]["ports"]}
    redis_pods = objects["Deployment", match[1]]["spec"]["template"]["metadata"]["labels"]
    assert redis_service["spec"]["selector"] == redis_pods


def test_kubernetes_probes_ask_the_chat_door() -> None:
    """Readiness asks the gRPC health service on the chat port; liveness only
    that the chat port takes connections."""
    container = hub_container()
    chat_port = hub_doors(hub_config(container["args"], container_env(container)))["chat"]
    assert container["readinessProbe"]["grpc"] == {"port": chat_port}
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[container["livenessProbe"]["tcpSocket"]["port"]] == chat_port


def test_a_hub_answers_the_readiness_probe(procs: Procs) -> None:
    """What Kubernetes' gRPC probe sends (grpc.health.v1 Check, no service
    name), sent to a hub process: SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, port = procs.server()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout(10))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_kubernetes_secret_holds_what_the_hubs_read() -> None:
    objects = k8s_objects()
    secret = objects["Secret", "hub"]
    keys = set(secret["stringData"])
    # Shipped empty, so that nothing runs on a secret everyone can read here.
    assert all(value == "" for value in secret["stringData"].values())
    container = hub_container()
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "hub" and ref["key"] in keys
    pod = objects["Deployment", "hub"]["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    (mount,) = container["volumeMounts"]
    assert volume["secret"]["secretName"] == "hub" and mount["name"] == volume["name"]
    files = {f"{mount['mountPath']}/{i['path']}": i["key"] for i in volume["secret"]["items"]}
    config = hub_config(container["args"], container_env(container))
    assert files[config.token_secret_file] == "token-secret"
    assert container_env(container)[SECRET_FILE_ENV] == config.token_secret_file


# -- Docker Compose and HAProxy ------------------------------------------------


def compose() -> dict[str, Any]:
    (doc,) = documents(DEPLOY / "compose.yaml")
    return doc  # type: ignore[no-any-return]


def compose_hubs() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if re.fullmatch(r"hub\d", name)}


def compose_config(service: dict[str, Any]) -> Config:
    # ${VAR:?message} is Compose's interpolation; the value does not matter here.
    env = {k: re.sub(r"\$\{\w+:\?[^}]*\}", "value", v) for k, v in service["environment"].items()}
    return hub_config(service["command"], env)


def haproxy_sections(text: str) -> dict[str, list[list[str]]]:
    """``{"frontend chat": [["bind", ":6262"], ...], ...}``; comments dropped."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            current.append(line.split())
    return sections


def test_the_image_the_hubs_run_has_the_backplane() -> None:
    """Compose builds, and Kubernetes runs, the repository's image with --redis:
    it must install the redis extra, and its build proves the backplane imports."""
    hubs = compose_hubs()
    assert {hub["build"] for hub in hubs.values()} == {".."}
    assert hub_container()["image"].startswith("hub")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'pip install --no-cache-dir "/src\[redis\]"', dockerfile)
    assert 'python -c "import hub.backplane"' in dockerfile


def test_compose_runs_redis_three_hubs_and_haproxy() -> None:
    services = compose()["services"]
    hubs = compose_hubs()
    assert sorted(hubs) == ["hub1", "hub2", "hub3"]
    for name, hub in hubs.items():
        config = compose_config(hub)
        assert config.redis == "redis://redis:6379", name
        assert config.password == "value", name
        # The signing secret from a Compose secret, mounted where the hub reads it.
        (secret,) = hub["secrets"]
        assert config.token_secret_file == f"/run/secrets/{secret}"
        assert secret in compose()["secrets"]
    assert "redis" in services and "redis-server" in services["redis"]["command"]
    published = {int(p.split(":")[0]): int(p.split(":")[1]) for p in services["haproxy"]["ports"]}
    assert published == {port: port for port in PUBLIC_PORTS.values()}
    (volume,) = services["haproxy"]["volumes"]
    assert volume.split(":")[0] == "./haproxy.cfg"


def test_haproxy_fronts_every_door_of_every_compose_hub() -> None:
    sections = haproxy_sections(HAPROXY_CFG.read_text())
    hubs = compose_hubs()
    for door, public in PUBLIC_PORTS.items():
        frontend = sections[f"frontend {door}"]
        assert ["bind", f":{public}"] in frontend
        assert ["default_backend", door] in frontend
        servers = {line[1]: line[2] for line in sections[f"backend {door}"] if line[0] == "server"}
        assert servers == {
            name: f"{name}:{hub_doors(compose_config(hub))[door]}" for name, hub in hubs.items()
        }
    defaults = sections["defaults"]
    assert ["mode", "tcp"] in defaults
    assert any(line[0] == "default-server" and "check" in line for line in defaults)


def test_haproxy_accepts_the_configuration() -> None:
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    output = check.stdout + check.stderr
    assert check.returncode == 0, output
    assert "Configuration file is valid" in output
    # The only warnings allowed: the hubs' names, which only Docker's DNS knows.
    for line in output.splitlines():
        if "[WARNING]" in line:
            assert re.search(r"could not resolve address 'hub\d'", line), line
