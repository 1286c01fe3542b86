"""What a policy file can get wrong as a file: YAML, text encoding, one file per tenant."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.tenants import PolicyFileError, PolicyRegistry, hash_key


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(PolicyFileError) as caught:
        PolicyRegistry.load(directory)
    return [str(p) for p in caught.value.problems]


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
