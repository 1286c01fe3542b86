"""What a policy file can get wrong: YAML, text encoding, one file per tenant, partial maps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from proxy.tenants import PolicyRegistry, hash_key
from tests.harness import RunningProxy, write_tenant
from tests.proxy.test_policies import problems_of
from tests.scripted_upstream import ScriptedUpstream


def test_a_section_written_twice_is_a_problem_not_a_silent_last_wins(policies_dir: Path) -> None:
    # YAML keeps the last of two equal keys: `enabled: false` would be dropped without a word.
    (policies_dir / "acme.yaml").write_text(
        f"keys: ['{hash_key('k')}']\n"
        "memory:\n  enabled: false\n"
        "models: {echo: {model: echo}}\n"
        "memory:\n  default_mode: read\n"
    )
    assert problems_of(policies_dir) == [
        "acme.yaml: line 5, column 1: not valid YAML: 'memory' is written twice in one "
        "mapping (first on line 2), and YAML would keep only the last; merge the two into one"
    ]


def test_anchors_and_merge_keys_still_load(policies_dir: Path) -> None:
    (policies_dir / "acme.yaml").write_text(
        "models:\n"
        "  a: &local {model: openai/llama3, api_base: 'http://127.0.0.1:8000/v1'}\n"
        "  b: {<<: *local, timeout_s: 5}\n"
    )
    policy = PolicyRegistry.load(policies_dir).get("acme")
    assert policy is not None
    assert (policy.models["b"].api_base, policy.models["b"].timeout_s) == (
        "http://127.0.0.1:8000/v1",
        5,
    )


def test_a_file_that_is_not_utf8_is_a_problem_at_load_and_on_reload(policies_dir: Path) -> None:
    path = policies_dir / "acme.yaml"
    latin1 = f"keys: ['{hash_key('k')}']\n# Café\n".encode("latin-1")
    path.write_bytes(latin1)
    assert problems_of(policies_dir) == [
        "acme.yaml: line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8 "
        "(an editor's 'encoding' setting, or iconv -f latin1 -t utf-8)"
    ]
    # While running, the same edit is reported and the last good version keeps serving.
    path.write_text(f"keys: ['{hash_key('k')}']\n")
    registry = PolicyRegistry.load(policies_dir)
    path.write_bytes(latin1 + b"models: {echo: {model: echo}}\n")
    registry.refresh(settled_only=False)
    assert [p.file for p in registry.problems] == ["acme.yaml"]
    assert registry.policy_for_key("k") is not None


def test_one_tenant_in_two_files_is_a_problem_and_deleting_one_keeps_the_other(
    policies_dir: Path,
) -> None:
    yaml_file, yml_file = policies_dir / "acme.yaml", policies_dir / "acme.yml"
    yaml_file.write_text(f"keys: ['{hash_key('k-yaml')}']\n")
    yml_file.write_text(f"keys: ['{hash_key('k-yml')}']\n")
    assert problems_of(policies_dir) == [
        "acme.yaml: tenant acme is also defined by acme.yml; keep one file per tenant and "
        "delete the other",
        "acme.yml: tenant acme is also defined by acme.yaml; keep one file per tenant and "
        "delete the other",
    ]
    # While running: a second file does not silently replace the tenant's keys...
    yml_file.unlink()
    registry = PolicyRegistry.load(policies_dir)
    yml_file.write_text(f"keys: ['{hash_key('k-yml')}']\n")
    registry.refresh(settled_only=False)
    assert [p.file for p in registry.problems] == ["acme.yaml", "acme.yml"]
    assert registry.policy_for_key("k-yaml") is not None
    assert registry.policy_for_key("k-yml") is None
    # ...and deleting it leaves the tenant of the file that remains.
    yml_file.unlink()
    registry.refresh(settled_only=False)
    assert registry.problems == []
    assert registry.policy_for_key("k-yaml") is not None


def test_a_partial_base_trust_keeps_the_other_sources_defaults(
    policies_dir: Path,
    upstream: ScriptedUpstream,
    start_proxy: Callable[..., RunningProxy],
) -> None:
    # Raising the user's prior must not zero the import prior (every import was then rejected).
    models = {"m": {"model": "openai/m", "api_base": upstream.url}}
    write_tenant(policies_dir, "acme", "k", models, sanitizer={"base_trust": {"user": 0.9}})
    proxy = start_proxy(policies_dir)
    created = httpx.post(
        proxy.base_url + "/v1/memories",
        headers={"authorization": "Bearer k"},
        json={"user": "alice", "kind": "fact", "text": "Alice works at the Lisbon office."},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    assert (created.json()["status"], created.json()["trust"]) == ("active", 0.9)


def test_per_source_and_per_kind_maps_name_known_keys_in_range(policies_dir: Path) -> None:
    (policies_dir / "acme.yaml").write_text(
        "sanitizer: {base_trust: {usr: 0.8, tool: 1.5}}\nmemory: {scoring: {lambda: {case: 1}}}\n"
    )
    assert problems_of(policies_dir) == [
        "acme.yaml: sanitizer.base_trust.tool: Input should be less than or equal to 1",
        "acme.yaml: sanitizer.base_trust.usr.[key]: 'usr' is not a source; base_trust is set "
        "for import, user, assistant, tool",
    ]
    (policies_dir / "acme.yaml").write_text("memory: {scoring: {lambda: {case: 1}}}\n")
    policy = PolicyRegistry.load(policies_dir).get("acme")
    assert policy is not None
    assert policy.memory.scoring.lambda_ == {
        "case": 1.0,
        "fact": 0.15,
        "preference": 0.15,
        "lesson": 0.0,
    }


def test_numbers_out_of_their_range_and_nan_are_problems(policies_dir: Path) -> None:
    # Each was taken silently: NaN passes every bound, a burst of 0 writes quarantined every
    # write, a negative quarantine TTL rejected every quarantined memory at once.
    (policies_dir / "acme.yaml").write_text(
        "sanitizer: {w_heur: .nan, session_burst: {count: 0}, quarantine_ttl_days: -1}\n"
        "memory: {feedback: {q0: 7}, scoring: {eta_trust: .inf}}\n"
    )
    assert problems_of(policies_dir) == [
        "acme.yaml: memory.scoring.eta_trust: Input should be a finite number",
        "acme.yaml: memory.feedback.q0: Input should be less than or equal to 1",
        "acme.yaml: sanitizer.w_heur: Input should be a finite number",
        "acme.yaml: sanitizer.session_burst.count: Input should be greater than or equal to 2",
        "acme.yaml: sanitizer.quarantine_ttl_days: Input should be greater than 0",
    ]


def test_an_api_base_that_is_not_a_url_is_a_problem(policies_dir: Path) -> None:
    # Loaded silently before: every call then answered 502 upstream_unreachable.
    (policies_dir / "acme.yaml").write_text(
        "models:\n"
        "  a: {model: openai/llama3, api_base: '127.0.0.1:8000/v1'}\n"
        "  b: {model: openai/llama3, api_base: 'htp://127.0.0.1:8000/v1'}\n"
        "  c: {model: openai/llama3, api_base: 'http://127.0.0.1:8000/v1'}\n"
    )
    assert problems_of(policies_dir) == [
        f"acme.yaml: models.{alias}.api_base: '{base}' is not an http:// or https:// URL, so no "
        "call could reach it; write the upstream's base URL, e.g. http://127.0.0.1:8000/v1"
        for alias, base in (("a", "127.0.0.1:8000/v1"), ("b", "htp://127.0.0.1:8000/v1"))
    ]


@pytest.mark.parametrize("holder", ["a", "z"])  # before and after the refused file by name
def test_a_file_refused_for_a_key_clash_loads_once_the_other_tenant_lets_go(
    policies_dir: Path, holder: str
) -> None:
    write_tenant(policies_dir, holder, "shared", {})
    registry = PolicyRegistry.load(policies_dir)
    write_tenant(policies_dir, "m", "shared", {})
    registry.refresh(settled_only=False)
    assert [p.file for p in registry.problems] == ["m.yaml"]
    write_tenant(policies_dir, holder, f"{holder}-own", {})  # the holder rotates its key
    registry.refresh(settled_only=False)
    assert registry.problems == []
    policy = registry.policy_for_key("shared")
    assert policy is not None and policy.tenant == "m"


def test_an_empty_file_loads_a_tenant_nobody_can_call_and_says_so(policies_dir: Path) -> None:
    write_tenant(policies_dir, "acme", "k", {})
    (policies_dir / "empty.yaml").write_text("")
    registry = PolicyRegistry.load(policies_dir)
    assert [str(w) for w in registry.warnings] == [
        "empty.yaml: keys: no keys, so no client can call this tenant; list the hash of one "
        "(`memento-proxy keys new` makes a key and prints it)"
    ]


def test_a_file_missing_for_one_poll_does_not_drop_its_tenant(policies_dir: Path) -> None:
    path = write_tenant(policies_dir, "acme", "k", {})
    registry = PolicyRegistry.load(policies_dir)
    registry.refresh()
    saved = path.read_text()
    path.unlink()  # an editor saving by delete-then-write, caught in between
    registry.refresh()
    assert registry.policy_for_key("k") is not None
    path.write_text(saved + "# saved\n")
    registry.refresh()
    registry.refresh()
    assert registry.policy_for_key("k") is not None
    path.unlink()  # deleted for good: gone at the next poll but one
    registry.refresh()
    registry.refresh()
    assert registry.get("acme") is None


def test_llm_consolidation_without_a_model_is_a_problem(policies_dir: Path) -> None:
    # It loaded, and facts were reconciled without any LLM: the switch did nothing.
    (policies_dir / "acme.yaml").write_text("memory: {consolidation: {llm: true}}\n")
    assert problems_of(policies_dir) == [
        "acme.yaml: memory.consolidation: llm is true but no model is named, so no LLM would "
        "ever be asked; set memory.consolidation.model (one of models' aliases or a litellm "
        "string), or llm: false"
    ]


def test_a_key_moved_between_tenants_in_one_edit_loads_whichever_file_is_read_first(
    policies_dir: Path,
) -> None:
    write_tenant(policies_dir, "zeta", "moving", {})
    write_tenant(policies_dir, "alpha", "alpha-own", {})
    write_tenant(policies_dir, "beta", "beta-own", {})
    registry = PolicyRegistry.load(policies_dir)
    # zeta gives the key up while alpha (read first) and beta both take it: alpha has it,
    # beta is refused (a key belongs to one tenant).
    write_tenant(policies_dir, "zeta", "zeta-own", {})
    for tenant in ("alpha", "beta"):
        keys = [hash_key(f"{tenant}-own"), hash_key("moving")]
        (policies_dir / f"{tenant}.yaml").write_text(f"keys: {keys}\n")
    registry.refresh(settled_only=False)
    moved = registry.policy_for_key("moving")
    assert moved is not None and moved.tenant == "alpha"
    assert [str(p) for p in registry.problems] == [
        "beta.yaml: keys: a key is already used by tenant 'alpha'; every proxy key belongs to "
        "exactly one tenant"
    ]
    assert registry.policy_for_key("zeta-own") is not None


def test_every_key_is_the_name_it_spells(policies_dir: Path) -> None:
    # YAML 1.1 read the alias `no:` as false and `1.5:` as a number: 'models.0.[key]: Input
    # should be a valid string', for aliases a client may well send.
    (policies_dir / "acme.yaml").write_text(
        f"keys: ['{hash_key('k')}']\nmodels:\n  no: {{model: echo}}\n  1.5: {{model: echo}}\n"
    )
    policy = PolicyRegistry.load(policies_dir).get("acme")
    assert policy is not None and set(policy.models) == {"no", "1.5"}


def test_a_tenant_id_yaml_reads_otherwise_or_a_file_name_that_is_none_says_what_to_write(
    policies_dir: Path,
) -> None:
    (policies_dir / "123.yaml").write_text("tenant: 123\n")
    (policies_dir / "Acme Corp.yaml").write_text(f"keys: ['{hash_key('k')}']\n")
    assert problems_of(policies_dir) == [
        "123.yaml: tenant: YAML reads 123 as a number, not a name; write it in quotes, "
        "tenant: '123', or leave tenant out (the file name gives it)",
        "Acme Corp.yaml: the file name is the tenant id, which must be lowercase letters, "
        "digits, '-' or '_' (at most 63 characters); rename the file, e.g. acme-corp.yaml",
    ]


def test_defaults_in_default_yml_are_not_taken_for_a_tenant(policies_dir: Path) -> None:
    # It loaded as a tenant named 'default', and its settings reached no tenant.
    write_tenant(policies_dir, "acme", "k", {})
    (policies_dir / "default.yml").write_text("memory: {fail_closed: true}\n")
    assert problems_of(policies_dir) == [
        "default.yml: the defaults are read from default.yaml only; rename this file"
    ]


def test_a_provider_key_in_a_header_is_refused_like_one_in_api_key(policies_dir: Path) -> None:
    (policies_dir / "acme.yaml").write_text(
        "models:\n  m: {model: openai/gpt-4o-mini, extra_headers: {Authorization: 'Bearer sk-1'}}\n"
    )
    assert problems_of(policies_dir) == [
        "acme.yaml: models.m.extra_headers: a provider key is never written into a policy file, "
        "headers included; name its variable in api_key: env:VARIABLE_NAME instead"
    ]


def test_an_empty_section_changes_nothing(policies_dir: Path) -> None:
    # `memory:` whose lines are commented out is null to YAML: it was refused as 'Input should
    # be a valid dictionary or instance of MemoryPolicy' (and would have replaced the defaults).
    (policies_dir / "default.yaml").write_text("memory: {fail_closed: true}\n")
    (policies_dir / "acme.yaml").write_text(
        f"keys: ['{hash_key('k')}']\nmemory:\n#  enabled: false\ntracing:\n"
    )
    policy = PolicyRegistry.load(policies_dir).get("acme")
    assert policy is not None
    assert (policy.memory.enabled, policy.memory.fail_closed) == (True, True)
