"""Run a benchmark script again in a fresh interpreter and read the JSON record it prints last.

The benchmarks measure one configuration per process, so that peak RSS, imported modules and
thread pools of one configuration do not carry over into the next.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def run_again(script: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
              check: bool = False) -> tuple[Any, str]:
    """``(record, "")`` from ``python script *args``, whose last line on stdout is a JSON record, or
    ``(None, why)`` when it failed: its last line on stderr, else its exit status.

    :param check: raise :class:`subprocess.CalledProcessError` on failure instead.
    """
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=check,
                          env=None if env is None else dict(env))
    if done.returncode:
        return None, (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1]), ""
