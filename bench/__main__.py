"""`python -m bench [NAME…]`: run every bench/bench_*.py (or the named ones), one process each.

Each benchmark module exposes `main() -> None`, prints a table and writes
bench/results/<name>.json. A separate process per module keeps one benchmark's imports, threads
and memory from skewing the next.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = [name.removeprefix("bench_").removesuffix(".py") for name in argv] or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}")
        return 2
    failed = []
    for name in names:
        print(f"== bench {name}", flush=True)
        code = f"import bench.bench_{name} as module; module.main()"
        result = subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, check=False)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
