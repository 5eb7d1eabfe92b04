"""A test-only stmod plugin (``-p stmod_faults``) that interrupts an edit at a chosen phase.

``STMOD_FAULT=PHASE:ACTION`` — PHASE is ``invert`` or ``denoise`` (the second step of the
``stmod.testing`` null modulator), ``cache-save`` (half of the cache entry written), ``output-write``
(the temporary output folder half written) or ``output-swap`` (the old output moved aside, the new
one in place, the old not yet deleted). ACTION is ``INT`` or ``KILL`` (the signal this process sends
itself) or ``BLOCK`` (write ``$STMOD_FAULT_READY`` and wait to be killed). Without the variable the
plugin changes nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _fire(action: str) -> None:
    if action == "BLOCK":
        Path(os.environ["STMOD_FAULT_READY"]).write_text(str(os.getpid()))
        time.sleep(120)
        return
    os.kill(os.getpid(), getattr(signal, f"SIG{action}"))
    time.sleep(30)  # SIGINT arrives here as KeyboardInterrupt; SIGKILL never returns


def _at_step(phase: str, action: str) -> None:
    from stmod import testing

    original = testing.NullModulator.call_kwargs

    def call_kwargs(self, *, phase: str, step_index: int, **kwargs):
        if phase == wanted and step_index == 1:
            _fire(action)
        return original(self, phase=phase, step_index=step_index, **kwargs)

    wanted = phase
    testing.NullModulator.call_kwargs = call_kwargs


def _in_cache_save(action: str) -> None:
    from stmod.core.pipeline import cache

    def write_entry(path, payload):
        Path(path).write_bytes(payload[: len(payload) // 2])
        _fire(action)

    cache.write_entry = write_entry


def _in_output_write(action: str) -> None:
    from stmod.core.io import outputs

    original = outputs.write_gif

    def write_gif(path, *args, **kwargs):
        written = original(path, *args, **kwargs)
        _fire(action)
        return written

    outputs.write_gif = write_gif


def _in_output_swap(action: str) -> None:
    from stmod.core.io import ownership

    original = ownership.remove_owned_tree

    def remove_owned_tree(path):
        if Path(path).name.endswith(".old"):
            _fire(action)
        return original(path)

    ownership.remove_owned_tree = remove_owned_tree


def _install() -> None:
    fault = os.environ.get("STMOD_FAULT")
    if not fault:
        return
    phase, action = fault.split(":")
    if phase in ("invert", "denoise"):
        _at_step(phase, action)
    else:
        {"cache-save": _in_cache_save, "output-write": _in_output_write, "output-swap": _in_output_swap}[phase](action)


_install()
