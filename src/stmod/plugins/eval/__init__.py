"""Built-in evaluation plugin: the ``stmod-run eval`` command and the metrics behind it.

CLIP-T / CLIP-F (:mod:`.clipscore`), Warp-Err (:mod:`.flow`), background PSNR/SSIM (:mod:`.metrics`),
the evaluator over output folders (:mod:`.evaluate`) and the tables it prints (:mod:`.tables`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stmod import hookimpl
from stmod.plugins.eval import command

if TYPE_CHECKING:
    from stmod.core.registry import CommandRegistrar


@hookimpl
def stmod_register_commands(register: CommandRegistrar) -> None:
    register.add("eval", configure=command.configure, run=command.run,
                 help="metrics of output folders: CLIP-T, CLIP-F, Warp-Err, Q-edit, region CLIP-T, background "
                      "PSNR/SSIM; --compare for a side-by-side table with time and memory",
                 examples=("stmod-run eval out/ --clip ~/models/clip-vit-large-patch14",
                           "stmod-run eval runs/a runs/b --compare --metrics warp,background"))
