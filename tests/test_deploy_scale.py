"""Deployment of several replicas: deploy/compose.scale.yaml (with nginx.conf and the collector's
config) and the Kubernetes manifests in deploy/k8s carry what running N replicas on one
PostgreSQL and one bucket needs, and nothing in deploy/ holds a key or a password.

No container runtime or cluster is here: files are read as YAML and text, compose's variable
substitution is reproduced for the forms the file uses, and `kubectl kustomize` (offline) builds
the manifests when kubectl is installed. The policies ConfigMap's update (kubelet's symlink
swap) is reproduced on disk and read by the real policy registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.app import build_app
from proxy.policy import ModelRoute
from proxy.settings import Settings
from proxy.tenants import PUBLISHED_KEYS, PolicyRegistry, hash_key
from tests.harness import write_tenant

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.scale.yaml"
PROXY_PORT = 4000  # MEMENTO_PORT in deploy/Dockerfile


_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's substitution for the forms compose.scale.yaml uses: `${VAR}`, `${VAR:-default}`,
    `${VAR:?message}` (an error when VAR is unset or empty) and `$$` for a literal `$`."""

    def substitute(match: re.Match[str]) -> str:
        name, form, argument = match.groups()
        value = env.get(name, "")
        if form == "?" and not value:
            raise KeyError(f"{name}: {argument}")
        return value or (argument if form == "-" else "")

    return _VARIABLE.sub(substitute, text.replace("$$", "\0")).replace("\0", "$")


def variables(text: str) -> dict[str, str]:
    """Each variable the file substitutes, with its form: `?` required, `-` defaulted."""
    return {name: form or "" for name, form, _ in _VARIABLE.findall(text)}


SCALE_ENV = {
    "POSTGRES_PASSWORD": "pg-test-value",
    "MINIO_ROOT_PASSWORD": "root-test-value",
    "MINIO_PROXY_PASSWORD": "proxy-test-value",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), SCALE_ENV))
    return loaded


def test_the_interpolation_follows_compose() -> None:
    text = "a: ${X:?set X}\nb: ${Y:-dflt}\nc: $$HOME ${Z}\n"
    assert interpolate(text, {"X": "1", "Z": "3"}) == "a: 1\nb: dflt\nc: $HOME 3\n"
    with pytest.raises(KeyError, match="X: set X"):
        interpolate(text, {"X": ""})


def test_every_password_is_required_and_none_is_committed() -> None:
    """Compose stops with a message when a password is missing (`${VAR:?…}`), never falls back to
    a value written in the file; the example env file names every variable and holds none."""
    text = COMPOSE.read_text()
    found = variables(text)
    secrets = {name for name in found if "PASSWORD" in name}
    assert secrets == set(SCALE_ENV)
    assert all(found[name] == "?" for name in secrets), found
    example = (DEPLOY / "scale.env.example").read_text()
    for name in found:
        assert re.search(rf"^#? ?{name}=", example, re.MULTILINE), f"{name} is not explained"
    assert re.findall(r"^(\w*PASSWORD)=(.*)$", example, re.MULTILINE) == [
        (name, "") for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MINIO_PROXY_PASSWORD")
    ]
    for name in secrets:
        with pytest.raises(KeyError, match=f"{name}: set {name} in deploy/scale.env"):
            interpolate(text, {k: v for k, v in SCALE_ENV.items() if k != name})
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "deploy/scale.env"], capture_output=True
    )
    assert ignored.returncode == 0, "deploy/scale.env must be git-ignored"


def _depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_replicas_start_after_the_migration_on_healthy_storage(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "minio",
        "bucket",
        "migrate",
        "proxy",
        "lb",
        "otel-collector",
    }
    proxy, migrate = services["proxy"], services["migrate"]
    assert proxy["deploy"]["replicas"] == 2
    assert _depends(proxy) == {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
        "minio": "service_healthy",
        "bucket": "service_completed_successfully",
        "otel-collector": "service_started",
    }
    assert migrate["command"] == ["migrate"]
    assert _depends(migrate) == {
        "postgres": "service_healthy",
        "bucket": "service_completed_successfully",
    }
    assert _depends(services["bucket"]) == {"minio": "service_healthy"}
    assert _depends(services["lb"]) == {"proxy": "service_healthy"}
    # Replicas and the migration run the image deploy/Dockerfile builds.
    for service in (proxy, migrate):
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert service["image"] == "memento-proxy:latest"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert services["bucket"]["image"].startswith("quay.io/minio/mc:")


def test_the_image_health_check_is_readiness() -> None:
    """`service_healthy` for a replica (the load balancer waits for it) means /readyz said 200."""
    healthcheck = [
        line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if "CMD" in line
    ]
    assert any("/readyz" in line and "!= 200" in line for line in healthcheck)


def test_replicas_share_the_database_bucket_and_policies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    proxy = services["proxy"]
    env = proxy["environment"]
    database = urlsplit(env["MEMENTO_DATABASE_URL"])
    assert (database.scheme, database.hostname, database.port) == ("postgresql", "postgres", 5432)
    assert (database.username, database.password) == ("memento", SCALE_ENV["POSTGRES_PASSWORD"])
    postgres = services["postgres"]["environment"]
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert database.username == postgres["POSTGRES_USER"]

    index = urlsplit(env["MEMENTO_INDEX_URI"])
    assert index.scheme == "s3" and index.path.strip("/")
    assert f"mc mb --ignore-existing store/{index.hostname}" in services["bucket"]["command"][0]
    policy = json.loads((DEPLOY / "minio-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{index.hostname}", f"arn:aws:s3:::{index.hostname}/*"}
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == services["bucket"]["environment"]["MINIO_PROXY_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == SCALE_ENV["MINIO_PROXY_PASSWORD"]
    assert {"AWS_REGION", "AWS_ALLOW_HTTP"} <= set(env)
    # The migration reaches the same storage the replicas do.
    shared = {k: v for k, v in env.items() if k.startswith(("MEMENTO_", "AWS_"))}
    assert services["migrate"]["environment"] == shared

    assert proxy["volumes"] == ["./policies:/policies:ro"]  # /data: one volume per container
    assert proxy["env_file"] == ".env"  # provider keys, as in the single-process compose
    assert not any(key.endswith("_API_KEY") for key in env)


def test_traces_go_to_the_collector(compose: dict[str, Any]) -> None:
    services = compose["services"]
    endpoint = urlsplit(services["proxy"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (endpoint.hostname, endpoint.port) == ("otel-collector", 4318)
    collector = services["otel-collector"]
    mounted = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in collector["volumes"]}
    config_path = collector["command"][0].removeprefix("--config=")
    config = yaml.safe_load(mounted[config_path].read_text())
    receiver = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert receiver == "0.0.0.0:4318"  # reachable from the replicas, the port they send to
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    for kind in ("processors", "exporters"):
        assert set(pipeline[kind]) <= set(config[kind]), kind


def _nginx(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The upstream block's `server` lines and every directive (name -> its argument strings)."""
    text = re.sub(r"#[^\n]*", "", text)
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", text)
    assert upstream is not None, "nginx.conf has no upstream block"
    servers = re.findall(r"^\s*server\s+([^;]+);", upstream.group(2), re.MULTILINE)
    directives: dict[str, list[str]] = {}
    for name, argument in re.findall(r"^\s*(\w+)(?:\s+([^;{]*))?;", text, re.MULTILINE):
        directives.setdefault(name, []).append(argument.strip())
    directives["upstream"] = [upstream.group(1)]
    return servers, directives


def _size(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def test_the_load_balancer_spreads_over_the_replicas_unbuffered(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    [mount] = lb["volumes"]
    source, target, *_ = mount.split(":")
    assert target == "/etc/nginx/nginx.conf"
    servers, directives = _nginx((DEPLOY / source).read_text())

    # One name for every replica of the `proxy` service, re-resolved as replicas come and go.
    [server] = servers
    address, *parameters = server.split()
    assert address == f"proxy:{PROXY_PORT}" and "resolve" in parameters
    assert "resolver" in directives and "zone" in directives
    assert compose["services"]["proxy"]["deploy"]["replicas"] >= 2
    assert not any(p.startswith(("hash", "ip_hash", "least_conn")) for p in directives)
    assert directives["proxy_pass"] == [f"http://{directives['upstream'][0]}"]

    # Streams pass through as they are written.
    assert directives["proxy_buffering"] == ["off"]
    assert directives["proxy_http_version"] == ["1.1"]
    model_timeout = ModelRoute.model_fields["timeout_s"].default
    assert int(directives["proxy_read_timeout"][0].rstrip("s")) > model_timeout
    # What the proxy accepts, nginx lets through.
    settings = Settings()
    assert _size(directives["client_max_body_size"][0]) >= settings.max_body_bytes
    assert _size(directives["large_client_header_buffers"][0].split()[1]) >= (
        settings.max_header_bytes
    )
    # Published on loopback, at the port the listen directive opens.
    [port] = lb["ports"]
    assert port == f"127.0.0.1:{PROXY_PORT}:{directives['listen'][0]}"


def test_the_probes_the_manifests_use_exist(tmp_path: Path) -> None:
    """The health routes compose and Kubernetes probe are the app's own."""
    app = build_app(Settings(policies_dir=ROOT / "policies", data_dir=tmp_path))
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {"/readyz", "/healthz"} <= paths


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose is not installed",
)
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """Compose's own reading of the file, in a copy of deploy/ with an empty provider env file
    (the operator's deploy/.env may be missing, or may set anything)."""
    project = tmp_path / "deploy"
    shutil.copytree(DEPLOY, project, ignore=shutil.ignore_patterns(".env", "scale.env"))
    (project / ".env").write_text("")
    given, empty = tmp_path / "scale.env", tmp_path / "empty.env"
    given.write_text("".join(f"{k}={v}\n" for k, v in SCALE_ENV.items()))
    empty.write_text("")
    base = ["docker", "compose", "--project-directory", str(project)]
    config = ["-f", str(project / COMPOSE.name), "config", "--quiet"]
    run = subprocess.run([*base, "--env-file", str(given), *config], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    missing = subprocess.run(
        [*base, "--env-file", str(empty), *config],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` applies: kustomize's build when kubectl is here,
    else the listed files as written (the generated ConfigMap then goes by its plain name)."""
    if shutil.which("kubectl"):
        built = subprocess.run(
            ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
        )
        return [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    documents = [
        doc
        for name in _kustomization()["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    ]
    for generator in _kustomization()["configMapGenerator"]:
        labels = generator["options"]["labels"]
        documents.append(
            {"kind": "ConfigMap", "metadata": {"name": generator["name"], "labels": labels}}
        )
    return documents


def _one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [doc for doc in manifests if doc["kind"] == kind]
    return found


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    [container] = containers
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _refs(container: dict[str, Any], kind: str) -> list[str]:
    return [source[kind]["name"] for source in container["envFrom"] if kind in source]


def test_the_kustomization_applies_no_secret() -> None:
    kustomization = _kustomization()
    listed = set(kustomization["resources"])
    shipped = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == shipped - {"secrets.example.yaml"}
    example = list(yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()))
    assert {doc["kind"] for doc in example} == {"Secret"}
    for secret in example:
        assert set(secret["stringData"].values()) == {""}, secret["metadata"]["name"]
    assert set(example[0]["stringData"]) == {
        "MEMENTO_DATABASE_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }


def test_the_replicas_are_probed_secured_and_sized(manifests: list[dict[str, Any]]) -> None:
    assert not any(doc["kind"] == "Secret" for doc in manifests)
    deployment = _one(manifests, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert container["args"] == ["serve"]
    [port] = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", PROXY_PORT)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}

    # Non-root as the image's user, on a read-only root: every folder the process writes
    # (the data folder; /tmp and ~/.cache, where ONNX Runtime keeps files) is a volume.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    uid = re.search(r"useradd[^&]*--uid (\d+)[^&]* (\w+)\s", dockerfile)
    assert uid is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"]
        for m in container["volumeMounts"]
        if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
    }
    home = f"/home/{uid.group(2)}"
    assert {_env(container)["MEMENTO_DATA_DIR"], "/tmp", f"{home}/.cache"} <= writable

    # One serving process per core of the CPU limit: nothing reads the limit itself.
    resources = container["resources"]
    processes = int(_env(container)["MEMENTO_PROCESSES"])
    assert processes == int(resources["limits"]["cpu"])

    # Sized from the measured footprint: the limit above the RSS a soak ended at, per process.
    soak = json.loads((ROOT / "bench" / "results" / "soak.json").read_text())
    assert {"cpu", "memory"} <= set(resources["requests"])
    limit_mib = _size(resources["limits"]["memory"].removesuffix("i")) / 1024**2
    assert limit_mib > processes * soak["rss_end_mb"]


def test_the_policies_configmap_is_the_folder_the_proxy_reads(
    manifests: list[dict[str, Any]],
) -> None:
    deployment = _one(manifests, "Deployment")
    container = _container(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [mount] = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    assert volumes[mount["name"]]["configMap"]["name"] == "memento-policies"
    assert mount["mountPath"] == _env(container)["MEMENTO_POLICIES"]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a subPath mount never sees the ConfigMap's updates


def test_keys_and_storage_credentials_come_from_secrets(manifests: list[dict[str, Any]]) -> None:
    deployment = _one(manifests, "Deployment")
    container = _container(deployment)
    assert _refs(container, "secretRef") == ["memento-storage", "memento-provider-keys"]
    secret_names = {"MEMENTO_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    literal = set(_env(container))
    assert not literal & secret_names and not any(n.endswith("_API_KEY") for n in literal)
    [settings] = [doc for doc in manifests if doc["kind"] == "ConfigMap"]
    assert _refs(container, "configMapRef") == [settings["metadata"]["name"]]
    assert not set(settings.get("data", {})) & secret_names


def test_the_migration_job_runs_first_with_the_same_image(
    manifests: list[dict[str, Any]],
) -> None:
    deployment, job = _one(manifests, "Deployment"), _one(manifests, "Job")
    migrate = _container(job)
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == _container(deployment)["image"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert "memento-storage" in _refs(migrate, "secretRef")
    # docs/deploy.md applies these first, by label, then waits for the Job: they must be all
    # the Job needs besides the operator's Secret, and no replica.
    label, value = "memento/apply-first", "true"
    first = [doc for doc in manifests if doc["metadata"].get("labels", {}).get(label) == value]
    assert sorted(doc["kind"] for doc in first) == ["ConfigMap", "Job"]
    [settings] = [doc for doc in first if doc["kind"] == "ConfigMap"]
    assert _refs(migrate, "configMapRef") == [settings["metadata"]["name"]]
    assert (
        f"kubectl apply -k deploy/k8s -l {label}={value}" in (ROOT / "docs/deploy.md").read_text()
    )


def test_service_and_disruption_budget_select_the_replicas(
    manifests: list[dict[str, Any]],
) -> None:
    deployment = _one(manifests, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, budget = _one(manifests, "Service"), _one(manifests, "PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1
    job_labels = _one(manifests, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items()


def test_a_configmap_update_is_hot_reloaded(tmp_path: Path) -> None:
    """kubelet mounts a ConfigMap as symlinks into a hidden timestamped folder (`..data` points at
    it) and updates it by writing a new folder and swapping `..data`: the registry follows the
    swap, reads no file twice through the hidden names, and drops a tenant whose key is gone."""
    mount = tmp_path / "policies"
    mount.mkdir()

    def publish(version: str, files: dict[str, Path]) -> None:
        folder = mount / f"..{version}"
        folder.mkdir()
        for name, source in files.items():
            shutil.copy(source, folder / name)
            # kubelet writes the new folder at update time: later than the previous one.
            stamp = 1_800_000_000 + int(version[1:])
            os.utime(folder / name, (stamp, stamp))
        swap = mount / "..data_tmp"
        swap.symlink_to(folder.name)
        swap.replace(mount / "..data")
        for name in files:
            if not (mount / name).is_symlink():
                (mount / name).symlink_to(f"..data/{name}")
        for link in mount.iterdir():
            if link.is_symlink() and not link.name.startswith(".") and link.name not in files:
                link.unlink()

    sources = tmp_path / "sources"
    first = write_tenant(sources / "v1", "acme", "acme-key-1", {"echo": {"model": "echo"}})
    other = write_tenant(sources / "v1", "globex", "globex-key", {"echo": {"model": "echo"}})
    publish("v1", {"acme.yaml": first, "globex.yaml": other})
    registry = PolicyRegistry.load(mount)
    assert registry.tenants() == ["acme", "globex"]
    assert registry.policy_for_key("acme-key-1") is not None

    second = write_tenant(sources / "v2", "acme", "acme-key-2", {"echo": {"model": "echo"}})
    publish("v2", {"acme.yaml": second})
    registry.refresh()  # seen once: not read yet, it might be half-written
    assert registry.refresh()  # unchanged since: read
    assert registry.tenants() == ["acme"]
    assert registry.policy_for_key("acme-key-1") is None
    assert registry.policy_for_key("acme-key-2") is not None
    assert registry.problems == []


_PUBLISHED = [re.escape(k) for k in PUBLISHED_KEYS]
_PUBLISHED += [re.escape(hash_key(k).split(":", 1)[1]) for k in PUBLISHED_KEYS]
_SECRET_PATTERNS = {
    "provider key": re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    "AWS key id": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "published proxy key": re.compile("|".join(_PUBLISHED)),
    "MinIO's default credentials": re.compile(r"minioadmin"),
    # A PASSWORD / SECRET / TOKEN / API_KEY setting given a value: not empty, not a switch, not
    # a reference (a shell `$VAR`, a policy's `env:NAME`; compose's `${…}` are taken out first).
    "literal secret": re.compile(
        r"(?i)\b\w*(?:password|secret|token|api_key)\w*[ \t]*[:=][ \t]*"
        r"(?!(?:\"\"|''|#|\"?\$|env:|(?:true|false)\b))[^\s#]+"
    ),
    "password in a URL": re.compile(r"://[^/\s:@]+:(?!<)[^@\s]+@"),
}
_COMPOSE_REFERENCE = re.compile(r"\$\{[^}]*\}")


def secrets_in(text: str) -> list[str]:
    """The kinds of secret written out in `text` (references to secrets held elsewhere pass)."""
    text = _COMPOSE_REFERENCE.sub("", text)
    return [name for name, pattern in _SECRET_PATTERNS.items() if pattern.search(text)]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("OPENAI_API_KEY=sk-proj-abcdefghijkl", ["provider key", "literal secret"]),
        ("POSTGRES_PASSWORD: hunter2", ["literal secret"]),
        ("  MINIO_ROOT_PASSWORD=correct-horse", ["literal secret"]),
        ("MEMENTO_METRICS_TOKEN: abc", ["literal secret"]),
        ("url: postgresql://memento:hunter2@postgres:5432/memento", ["password in a URL"]),
        ("aws_access_key_id: AKIAABCDEFGHIJKLMNOP", ["AWS key id"]),
        ("MINIO_ROOT_USER: minioadmin", ["MinIO's default credentials"]),
        (f"keys: [{hash_key(PUBLISHED_KEYS[0])}]", ["published proxy key"]),
        (f"# key: {PUBLISHED_KEYS[0]}", ["published proxy key"]),
        ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}", []),
        ("POSTGRES_PASSWORD=", []),
        ("# OPENAI_API_KEY=", []),
        ('AWS_SECRET_ACCESS_KEY: ""', []),
        ("- secretRef:\n    name: memento-storage", []),
        ("url: postgresql://memento:${POSTGRES_PASSWORD:?x}@postgres:5432/memento", []),
        ("# postgresql://<user>:<password>@<host>:5432/<database>", []),
        ('--from-literal=AWS_SECRET_ACCESS_KEY="$S3_SECRET"', []),
        ("api_key: env:OPENAI_API_KEY", []),
        ("automountServiceAccountToken: false", []),
        ("OPENAI_API_KEY: sk-", ["literal secret"]),
    ],
)
def test_the_secret_scan_tells_values_from_references(text: str, found: list[str]) -> None:
    assert secrets_in(text) == found


def test_nothing_in_deploy_holds_a_key_or_password() -> None:
    """Every file of deploy/ the repository ships (the operator's git-ignored .env, scale.env and
    policies are theirs, not shipped)."""
    shipped = ["ls-files", "--cached", "--others", "--exclude-standard", "deploy"]
    listed = subprocess.run(
        ["git", "-C", str(ROOT), *shipped],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "deploy/compose.scale.yaml" in listed and "deploy/k8s/deployment.yaml" in listed
    found = {path: names for path in listed if (names := secrets_in((ROOT / path).read_text()))}
    assert found == {}


def test_every_deployment_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 9
    for path in files:
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc], path
    json.loads((DEPLOY / "minio-policy.json").read_text())
