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
    known = {**relayed, "model": "openai/gpt-4o-mini"}
    assert not registry(tmp_path / "echo", {"echo": {"model": "echo"}})
    # A relayed route: its token budget reads litellm's model info, unless it names its window
    # or is one of OpenAI's models, whose window is read from litellm's map without litellm.
    assert registry(tmp_path / "relayed", {"m": relayed})
    assert not registry(tmp_path / "sized", {"m": sized})
    assert not registry(tmp_path / "known", {"m": known})
    assert not registry(tmp_path / "no-memory", {"m": relayed}, memory={"enabled": False})
    assert registry(tmp_path / "translated", {"m": {"model": "anthropic/claude-x"}})
    # A memory model named by a litellm string is called through litellm.
    judge = {"judge_model": "anthropic/claude-x"}
    assert registry(tmp_path / "judge", {"m": sized}, sanitizer=judge)
    assert not registry(tmp_path / "judge-alias", {"m": sized}, sanitizer={"judge_model": "m"})


def test_the_window_of_an_openai_model_is_read_without_importing_litellm() -> None:
    script = """
import sys
from proxy.memory.budget import litellm_context_window
print(litellm_context_window("openai/gpt-4o-mini"), litellm_context_window("gpt-4o-mini"))
print("litellm" in sys.modules)
litellm_context_window("anthropic/claude-3-5-sonnet-20241022")
print("litellm" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    # Any other provider's model is asked of litellm, which it imports then.
    assert done.stdout.split() == ["128000", "128000", "False", "True"]


def run_demo(data: Path, body: str) -> list[str]:
    """Run `body` in a fresh interpreter where `serve()` is a TestClient of the shipped policies
    on `data` and `ask(client, text)` one demo chat call; the lines it printed."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from starlette.testclient import TestClient
        from proxy.app import build_app
        from proxy.settings import Settings
        from proxy.tokens import loaded_encodings

        def serve():
            return TestClient(build_app(Settings(
                policies_dir=Path({str(ROOT / "policies")!r}), data_dir=Path({str(data)!r}))))

        def ask(client, text, **headers):
            answer = client.post(
                "/v1/chat/completions",
                headers={{"Authorization": "Bearer memento-demo-key", **headers}},
                json={{"model": "echo", "user": "ana",
                       "messages": [{{"role": "user", "content": text}}]}},
            )
            assert answer.status_code == 200, answer.text
            return answer
        """
    ) + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_the_demo_tenant_serves_memory_without_importing_litellm(tmp_path: Path) -> None:
    """The shipped policies (echo model, memory on) start, answer and learn without litellm, and
    with only the encoding their routes use."""
    printed = run_demo(
        tmp_path / "data",
        """
        with serve() as client:
            print("lancedb" in sys.modules)  # a new folder: no table to open yet
            ask(client, "I prefer tea.")
        print(sorted(loaded_encodings()))
        print("litellm" in sys.modules)
        """,
    )
    assert printed[-3:] == ["False", "['cl100k_base']", "False"]


def test_a_restarted_proxy_serves_hot_scopes_without_lancedb(tmp_path: Path) -> None:
    """Once the folder has index tables, a restarted proxy still starts without LanceDB, and a
    user's memories (a scope held in process) are searched without it; a write loads it."""
    learn = """
        with serve() as client:
            ask(client, "I live in Lisbon and I prefer tea.")
        print("lancedb" in sys.modules)
        """
    assert run_demo(tmp_path / "data", learn)[-1] == "True"  # the index has a table now
    printed = run_demo(
        tmp_path / "data",
        """
        with serve() as client:
            print("lancedb" in sys.modules)
            read = {"X-Memento-Mode": "read"}
            print(ask(client, "What should I drink in the morning?", **read).headers[
                "x-memento-memories"])
            print("lancedb" in sys.modules)
            ask(client, "I also like green tea.")
        print("lancedb" in sys.modules)
        """,
    )
    assert printed[0] == "False"
    assert int(printed[1]) >= 1
    assert printed[2:] == ["False", "True"]
