"""Policy files: loading, defaults, validation errors with file/field/reason, hot reload."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel

import proxy
from proxy.memory.seam import NoMemory
from proxy.policy import ModelRoute, Policy
from proxy.tenants import PolicyFileError, PolicyRegistry, hash_key
from tests.harness import RunningProxy, write_tenant
from tests.test_support import wait_until

ECHO = {"echo": {"model": "echo"}}
POLICIES = Path(__file__).parents[2] / "policies"


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        PolicyRegistry.load(directory)
    return [str(p) for p in caught.value.problems]


def test_defaults_merge_under_tenant_files(policies_dir: Path) -> None:
    (policies_dir / "default.yaml").write_text(
        "limits: {max_body_bytes: 1000}\nmemory: {retrieval: {k1: 12}, fail_closed: true}\n"
    )
    write_tenant(policies_dir, "acme", "k1", ECHO, memory={"retrieval": {"k2_cases": 2}})
    registry = PolicyRegistry.load(policies_dir)
    policy = registry.get("acme")
    assert policy is not None
    assert policy.limits.max_body_bytes == 1000
    assert (policy.memory.retrieval.k1, policy.memory.retrieval.k2_cases) == (12, 2)
    assert policy.memory.fail_closed is True
    assert registry.policy_for_key("k1") is policy
    assert registry.policy_for_key("k2") is None


def test_keys_are_stored_hashed() -> None:
    assert hash_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_invalid_files_report_file_field_and_reason(policies_dir: Path) -> None:
    write_tenant(policies_dir, "good", "k-good", ECHO)
    (policies_dir / "typo.yaml").write_text(
        "tenant: typo\nmodels:\n  m: {model: echo, tiemout_s: 3}\n"
    )
    (policies_dir / "badkey.yaml").write_text(f"keys: ['{hash_key('k-ok')}', plaintext-key]\n")
    (policies_dir / "secret.yaml").write_text(
        "models:\n  m: {model: openai/gpt-4o, api_key: sk-live-123}\n"
    )
    (policies_dir / "wrongname.yaml").write_text("tenant: someone-else\n")
    (policies_dir / "broken.yaml").write_text("models: [unclosed\n")
    (policies_dir / "range.yaml").write_text("memory: {retrieval: {k1: 0}}\n")
    problems = problems_of(policies_dir)
    text = "\n".join(problems)
    assert "typo.yaml: models.m.tiemout_s: unknown field" in text
    assert "badkey.yaml: keys.1: each key must be sha256:" in text  # the entry, by index
    assert "secret.yaml: models.m.api_key: api_key must reference the server environment" in text
    assert "wrongname.yaml: tenant: 'someone-else' does not match the file name" in text
    assert "broken.yaml: line 2" in text and "not valid YAML" in text
    assert "range.yaml: memory.retrieval.k1: Input should be greater than or equal to 1" in text
    assert not any(p.startswith("good.yaml") for p in problems)


def test_a_key_belongs_to_one_tenant(policies_dir: Path) -> None:
    write_tenant(policies_dir, "a", "shared-key", ECHO)
    write_tenant(policies_dir, "b", "shared-key", ECHO)
    assert any("already used by tenant 'a'" in p for p in problems_of(policies_dir))


def test_defaults_may_not_declare_keys(policies_dir: Path) -> None:
    (policies_dir / "default.yaml").write_text(f"keys: ['{hash_key('x')}']\n")
    write_tenant(policies_dir, "a", "k", ECHO)
    assert any(
        "default.yaml: keys: belongs in a tenant file" in p for p in problems_of(policies_dir)
    )


def test_empty_directory_is_an_error(policies_dir: Path) -> None:
    assert any("no tenant policy files" in p for p in problems_of(policies_dir))


def _models(proxy: RunningProxy, key: str) -> set[str]:
    response = httpx.get(proxy.base_url + "/v1/models", headers={"authorization": f"Bearer {key}"})
    if response.status_code != 200:
        return set()
    return {m["id"] for m in response.json()["data"]}


def test_a_file_caught_half_written_is_not_loaded(policies_dir: Path) -> None:
    path = write_tenant(policies_dir, "acme", "key-1", ECHO)
    registry = PolicyRegistry.load(policies_dir)
    full = path.read_text()
    path.write_text("tenant: acme\n")  # an editor rewriting in place, caught mid-write
    registry.refresh()
    assert registry.policy_for_key("key-1") is not None  # a keyless tenant was not loaded
    path.write_text(full.replace("echo", "echo2", 1) + "# saved\n")
    registry.refresh()  # changed again since the last poll: still not read
    assert registry.get("acme") is not None and set(registry.get("acme").models) == {"echo"}
    registry.refresh()  # unchanged for one poll: read
    assert set(registry.get("acme").models) == {"echo2"}


def test_hot_reload_keeps_the_last_good_version_on_an_invalid_edit(
    policies_dir: Path, start_proxy: Callable[..., RunningProxy], caplog: pytest.LogCaptureFixture
) -> None:
    path = write_tenant(policies_dir, "acme", "key-1", ECHO)
    proxy = start_proxy(policies_dir, memory=NoMemory())  # the core alone: memory has its own tests
    assert _models(proxy, "key-1") == {"echo"}

    # A valid edit is picked up: a new alias, a rotated key.
    write_tenant(policies_dir, "acme", "key-2", {**ECHO, "echo2": {"model": "echo"}})
    wait_until(lambda: _models(proxy, "key-2") == {"echo", "echo2"})
    assert _models(proxy, "key-1") == set()

    # An invalid edit is reported; the last good version keeps serving.
    path.write_text(path.read_text() + "unknown_section: {x: 1}\n")
    registry: PolicyRegistry = proxy.app.state.policies
    wait_until(lambda: bool(registry.problems))
    assert [str(p) for p in registry.problems] == [
        "acme.yaml: unknown_section: unknown field (check the spelling against policies/README.md)"
    ]
    assert _models(proxy, "key-2") == {"echo", "echo2"}
    ready = httpx.get(proxy.base_url + "/readyz").json()
    assert (ready["status"], ready["tenants"], ready["policy_problems"]) == ("ready", 1, 1)
    assert ready["problems"] == []  # a policy problem leaves the tenant serving: still ready
    assert "invalid policy acme.yaml: unknown_section" in caplog.text
    assert "(the last good version keeps serving)" in caplog.text
    # A new tenant's invalid file has no good version to keep: the log must not promise one.
    caplog.clear()
    (policies_dir / "beta.yaml").write_text("tenant: beta\nunknown_section: {x: 1}\n")
    wait_until(lambda: len(registry.problems) == 2)
    (line,) = [r.getMessage() for r in caplog.records if "beta.yaml" in r.getMessage()]
    assert line.endswith("(tenant beta is not served until the file is fixed)"), line
    assert "last good version" not in line

    # Fixing the file clears the problem; a new tenant file adds a tenant, deleting removes it.
    write_tenant(policies_dir, "acme", "key-3", ECHO)
    write_tenant(policies_dir, "beta", "key-b", ECHO)
    wait_until(lambda: _models(proxy, "key-3") == {"echo"} and _models(proxy, "key-b") == {"echo"})
    assert registry.problems == []
    (policies_dir / "beta.yaml").unlink()
    wait_until(lambda: _models(proxy, "key-b") == set())
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="key-3")
    assert (
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "still here"}]
        )
        .choices[0]
        .message.content
    )


def test_cli_policy_check_and_keys(policies_dir: Path) -> None:
    write_tenant(policies_dir, "acme", "k", ECHO)
    ok = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "policy", "check", str(policies_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "acme: 1 key(s); models: echo"

    (policies_dir / "bad.yaml").write_text("models: {m: {}}\n")
    bad = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "policy", "check", str(policies_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "bad.yaml: models.m.model: Field required" in bad.stderr

    hashed = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "keys", "hash", "abc"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert hashed.stdout.strip() == hash_key("abc")

    version = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"memento-proxy {proxy.__version__}"


def test_shipped_policies_are_valid() -> None:
    registry = PolicyRegistry.load(POLICIES)
    demo = registry.get("demo")
    assert demo is not None and "echo" in demo.models
    assert registry.policy_for_key("memento-demo-key") is demo


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += _field_paths(annotation, key + ".")
        elif key == "models":
            paths += _field_paths(ModelRoute, "models.<alias>.")
        else:
            paths.append(key)
    return paths


def test_policies_readme_documents_every_field() -> None:
    readme = (POLICIES / "README.md").read_text()
    missing = [path for path in _field_paths(Policy) if f"`{path}`" not in readme]
    assert missing == [], f"policies/README.md lacks: {', '.join(missing)}"


def test_a_removed_field_is_reported_as_removed(policies_dir: Path) -> None:
    (policies_dir / "old.yaml").write_text(
        "sanitizer: {w_clf: 0.3, mad_k: 3}\nguard: {llm_consensus: true, model: echo}\n"
    )
    problems = problems_of(policies_dir)
    assert problems == [
        "old.yaml: sanitizer.w_clf: removed: there is no classifier to weigh; delete the line",
        "old.yaml: sanitizer.mad_k: removed: there is no outlier detection it tuned; "
        "delete the line",
        "old.yaml: guard.llm_consensus: removed: no LLM consensus runs at read time; delete the "
        "line (sanitizer.judge_model asks an LLM about uncertain memories at write time)",
        "old.yaml: guard.model: removed together with guard.llm_consensus; delete the line",
    ]


def test_committed_schema_is_current() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "policy", "schema"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (POLICIES / "policy.schema.json").read_text()
    assert json.loads(committed) == json.loads(generated), (
        "regenerate: memento-proxy policy schema > policies/policy.schema.json"
    )


def test_serve_refuses_to_start_on_invalid_policies(policies_dir: Path, tmp_path: Path) -> None:
    (policies_dir / "acme.yaml").write_text("tenant: acme\nkeys: [not-a-hash]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy.cli",
            "serve",
            "--port",
            "0",
            "--policies",
            str(policies_dir),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2
    assert "acme.yaml: keys.0: each key must be sha256:" in result.stderr


def test_unquoted_yaml_off_means_off(policies_dir: Path) -> None:
    # YAML 1.1 reads a bare `off` as false; every field whose values include 'off' takes it.
    (policies_dir / "acme.yaml").write_text(
        "models: {echo: {model: echo}}\n"
        "memory: {default_mode: off, allowed_modes: [off, read], anonymous: off}\n"
        "tracing: {content: off}\n"
    )
    policy = PolicyRegistry.load(policies_dir).get("acme")
    assert policy is not None
    assert policy.memory.default_mode == "off"
    assert policy.memory.allowed_modes == ["off", "read"]
    assert policy.memory.anonymous == "off"
    assert policy.tracing.content == "off"
    (policies_dir / "acme.yaml").write_text("memory: {allowed_modes: [on]}\n")
    assert problems_of(policies_dir) == [
        "acme.yaml: memory.allowed_modes.0: Input should be 'off', 'read', 'write' or 'full'"
    ]


def test_models_no_call_could_reach_are_refused(policies_dir: Path) -> None:
    write_tenant(
        policies_dir,
        "acme",
        "k",
        {
            "dead": {"model": "notaprovider/dead"},
            "bare": {"model": "llama3"},
            "relayed": {"model": "notaprovider/x", "passthrough": True},
            "vllm": {"model": "hosted_vllm/llama3"},
            "native": {"model": "anthropic/claude-3-5-haiku-latest", "native_apis": ["messages"]},
            "fine": {"model": "anthropic/claude-3-5-haiku-latest"},
            "local": {"model": "notaprovider/x", "passthrough": True, "api_base": "http://h/v1"},
        },
        memory={"extraction": {"model": "nope/extractor"}},
    )
    assert problems_of(policies_dir) == [
        "acme.yaml: models.dead.model: litellm knows no provider for 'notaprovider/dead'; write "
        "it as <provider>/<model>, e.g. openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest "
        "or ollama/llama3",
        "acme.yaml: models.bare.model: litellm knows no provider for 'llama3'; write it as "
        "<provider>/<model>, e.g. openai/gpt-4o-mini, anthropic/claude-3-5-haiku-latest or "
        "ollama/llama3",
        "acme.yaml: models.relayed.model: 'notaprovider/x' is relayed directly (passthrough) but "
        "has no api_base; write its server's URL, e.g. api_base: http://127.0.0.1:8000/v1",
        # litellm would have sent it to OpenAI's API
        "acme.yaml: models.vllm.model: 'hosted_vllm/llama3' is a self-hosted model but has no "
        "api_base; write its server's URL, e.g. api_base: http://127.0.0.1:8000/v1",
        # its Messages calls were answered 500 upstream_misconfigured
        "acme.yaml: models.native.model: 'anthropic/claude-3-5-haiku-latest' relays messages "
        "calls as they come (native_apis) but has no api_base; write its server's URL, e.g. "
        "api_base: http://127.0.0.1:8000/v1",
        "acme.yaml: memory.extraction.model: litellm knows no provider for 'nope/extractor'; "
        "write it as <provider>/<model>, e.g. openai/gpt-4o-mini, "
        "anthropic/claude-3-5-haiku-latest or ollama/llama3",
    ]


def test_a_memory_budget_too_small_for_one_memory_is_warned_of(policies_dir: Path) -> None:
    """A block with one short memory takes 95 tokens in o200k (96 in cl100k, echo's): a
    smaller `memory.budget.max_tokens` is a warning naming the field, and the tenant serves."""
    routes = {"mini": {"model": "openai/gpt-4o-mini"}}
    write_tenant(policies_dir, "acme", "k1", routes, memory={"budget": {"max_tokens": 60}})
    write_tenant(policies_dir, "bare", "k2", routes, memory={"budget": {"max_tokens": 95}})
    write_tenant(policies_dir, "off", "k3", routes, memory={"budget": {"max_tokens": 0}})
    off = {"enabled": False, "budget": {"max_tokens": 0}}
    write_tenant(policies_dir, "plain", "k4", routes, memory=off)
    echo = {"e": {"model": "echo"}}
    write_tenant(policies_dir, "wide", "k5", echo, memory={"budget": {"max_tokens": 95}})
    registry = PolicyRegistry.load(policies_dir)
    assert registry.get("acme") is not None
    warned = {(w.file, w.field): w.reason for w in registry.warnings}
    assert set(warned) == {
        ("acme.yaml", "memory.budget.max_tokens"),
        ("off.yaml", "memory.budget.max_tokens"),
        ("wide.yaml", "memory.budget.max_tokens"),
    }
    assert warned["acme.yaml", "memory.budget.max_tokens"].startswith(
        "60 tokens are fewer than a memory block with one short memory takes with this "
        "tenant's models (95: "
    )
    assert "set at least 96" in warned["wide.yaml", "memory.budget.max_tokens"]

    command = [sys.executable, "-m", "proxy.cli", "policy", "check", str(policies_dir)]
    checked = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    assert "warning: acme.yaml: memory.budget.max_tokens: 60 tokens are fewer" in checked.stderr


def test_policy_check_prints_each_problem_once_and_warns_of_unset_keys(
    policies_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAKE_KEY", raising=False)
    keyed = {"k": {"model": "anthropic/claude-3-5-haiku-latest", "api_key": "env:FAKE_KEY"}}
    write_tenant(policies_dir, "acme", "k1", keyed)

    def check() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "proxy.cli", "policy", "check", str(policies_dir)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    warned = check()
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.splitlines() == [
        "warning: acme.yaml: models.k.api_key: the environment variable FAKE_KEY is not set; "
        "calls to 'k' answer 500 upstream_misconfigured until the server runs with it"
    ]
    write_tenant(policies_dir, "bad", "k2", {"dead": {"model": "notaprovider/dead"}})
    (policies_dir / "off.yaml").write_text("memory: {default_mode: of}\n")
    failed = check()
    assert failed.returncode == 2
    lines = failed.stderr.splitlines()
    assert lines[0] == "invalid policies (2 problem(s)):"
    assert len(lines) == 3 and len(set(lines)) == 3, failed.stderr  # each once
    assert "bad.yaml: models.dead.model: litellm knows no provider" in lines[1]
    assert lines[2].startswith("  off.yaml: memory.default_mode: Input should be")
