"""`make bench`: run every benchmark module in turn (or those named on the command line)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = [name for name in names if name not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        importlib.import_module(f"bench.{name}")  # fail fast on an import error, before starting any stack
        print(f"\n=== bench.{name}", flush=True)
        # Each benchmark in its own process: its stack, its memory figures, nothing shared.
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode != 0:  # noqa: S603
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
