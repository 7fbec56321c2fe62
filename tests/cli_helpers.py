"""Helpers shared by the tests that run the command line in subprocesses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_weakseg(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m weakseg ARGS`` in ``cwd``; with ``ok`` assert it succeeded (stderr in the message)."""
    proc = subprocess.run(
        [sys.executable, "-m", "weakseg", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
