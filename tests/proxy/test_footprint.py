"""litellm (slow to import, ~170 MB resident) is loaded only by a process that will use it, and
a tiktoken encoding (o200k: ~70 MB) only when a route counts tokens with it, and LanceDB (~75 MB)
only once the index has a table."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from proxy.app import needs_litellm
from proxy.tenants import PolicyRegistry
from tests.harness import write_tenant

ROOT = Path(__file__).resolve().parents[2]


def registry(policies: Path, models: dict[str, dict[str, object]], **extra: object) -> bool:
    write_tenant(policies, "acme", "acme-key", models, **extra)
    return needs_litellm(PolicyRegistry.load(policies))


def test_only_translation_and_model_info_need_litellm(tmp_path: Path) -> None:
    relayed = {"model": "openai/m", "api_base": "http://127.0.0.1:9/v1"}
    sized = {**relayed, "context_window": 8000}
    assert not registry(tmp_path / "echo", {"echo": {"model": "echo"}})
    # A relayed route: its token budget reads litellm's model info, unless it names its window.
    assert registry(tmp_path / "relayed", {"m": relayed})
    assert not registry(tmp_path / "sized", {"m": sized})
    assert not registry(tmp_path / "no-memory", {"m": relayed}, memory={"enabled": False})
    assert registry(tmp_path / "translated", {"m": {"model": "anthropic/claude-x"}})
    # A memory model named by a litellm string is called through litellm.
    judge = {"judge_model": "anthropic/claude-x"}
    assert registry(tmp_path / "judge", {"m": sized}, sanitizer=judge)
    assert not registry(tmp_path / "judge-alias", {"m": sized}, sanitizer={"judge_model": "m"})


def test_the_demo_tenant_serves_memory_without_importing_litellm(tmp_path: Path) -> None:
    """The shipped policies (echo model, memory on) start, answer and learn without litellm, and
    with only the encoding their routes use."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from starlette.testclient import TestClient
        from proxy.app import build_app
        from proxy.settings import Settings
        from proxy.tokens import loaded_encodings

        settings = Settings(policies_dir=Path({str(ROOT / "policies")!r}),
                            data_dir=Path({str(tmp_path / "data")!r}))
        with TestClient(build_app(settings)) as client:
            lancedb_at_start = "lancedb" in sys.modules  # a new folder: no table to open yet
            answer = client.post(
                "/v1/chat/completions",
                headers={{"Authorization": "Bearer memento-demo-key"}},
                json={{"model": "echo", "user": "ana",
                       "messages": [{{"role": "user", "content": "I prefer tea."}}]}},
            )
            assert answer.status_code == 200, answer.text
        print(lancedb_at_start)
        print(sorted(loaded_encodings()))
        print("litellm" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-3:] == ["False", "['cl100k_base']", "False"]
