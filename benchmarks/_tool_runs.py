"""Run one benchmark script's per-tool workers, each in its own subprocess.

Shared by bench_bragg.py and bench_strain.py: stem4d runs in this Python, the peers in
the peers' virtual environment; each worker writes its arrays to an .npz and prints a
JSON line with its rows and notes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def run_tools(script: str, tools: Iterable[str], peers_python: str, repeat: int,
              out_for: Callable[[str], Path]) -> Iterator[tuple[str, dict, Path]]:
    """Yield ``(tool, parsed JSON result, output .npz)`` for each tool whose worker ran."""
    env = dict(os.environ, TQDM_DISABLE="1")
    for name in tools:
        python = sys.executable if name == "stem4d" else peers_python
        if not Path(python).exists():
            print(f"skipping {name}: no interpreter at {python}", file=sys.stderr)
            continue
        out = out_for(name)
        t0 = time.perf_counter()
        proc = subprocess.run([python, script, "--worker", name, "--repeat", str(repeat),
                               "--out", str(out)], capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f"{name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        yield name, json.loads(proc.stdout.strip().splitlines()[-1]), out
