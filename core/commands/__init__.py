"""Built-in ``stmod-run`` subcommands, registered through ``stmod_register_commands`` like any plugin's."""

from __future__ import annotations

from stmod import hookimpl
from stmod.core.commands import check, edit, inspect
from stmod.core.commands import layout as layout_command
from stmod.core.commands import batch as batch_command
from stmod.core.commands import eval as eval_command


@hookimpl
def stmod_register_commands(register) -> None:
    register.add("plugins", configure=inspect.configure_plugins, run=inspect.run_plugins,
                 help="list installed plugins, their versions and the components each provides")
    register.add("list", configure=inspect.configure_list, run=inspect.run_list,
                 help="list the components of one kind (backbones, layouts, modulators, blenders, annotators)")
    register.add("check", configure=check.configure, run=check.run,
                 help="validate a job and its files without loading any model")
    register.add("edit", configure=edit.configure_edit, run=edit.run_edit,
                 help="edit a clip: a job file and/or flags (see stmod-run edit --help)")
    register.add("demo", configure=edit.configure_demo, run=edit.run_demo,
                 help="run the whole pipeline on a synthetic clip with the tiny model (CPU, ~1-2 min)")
    register.add("eval", configure=eval_command.configure, run=eval_command.run,
                 help="metrics of output folders: CLIP-T, CLIP-F, Warp-Err, Q-edit, region CLIP-T, background "
                      "PSNR/SSIM; --compare for a side-by-side table with time and memory")
    register.add("layout", configure=layout_command.configure, run=layout_command.run,
                 help="compute a job's layout only: masks.mp4 and mask PNG folders (kmeans runs the inversion)")
    register.add("batch", configure=batch_command.configure, run=batch_command.run,
                 help="run a manifest of many edits (clips x prompts x presets x seeds): resumable, grouped by "
                      "clip, sharded over processes under torchrun / accelerate launch")
