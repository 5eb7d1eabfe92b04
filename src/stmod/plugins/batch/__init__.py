"""Built-in batch plugin: ``stmod-run batch`` over a manifest of many edits (:mod:`.manifest`, :mod:`.run`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stmod import hookimpl
from stmod.plugins.batch import command

if TYPE_CHECKING:
    from stmod.core.registry import CommandRegistrar


@hookimpl
def stmod_register_commands(register: CommandRegistrar) -> None:
    register.add("batch", configure=command.configure, run=command.run,
                 help="run a manifest of many edits (clips x prompts x presets x seeds): resumable, grouped by "
                      "clip, sharded over processes under torchrun / accelerate launch",
                 examples=("stmod-run batch batch.yaml --plan", "torchrun --nproc-per-node 2 -m stmod batch batch.yaml --eval"))
