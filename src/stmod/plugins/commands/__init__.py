"""Built-in ``stmod-run`` subcommands, registered through ``stmod_register_commands`` like any plugin's.

``eval`` and ``batch`` are built-in plugins of their own (:mod:`stmod.plugins.eval`,
:mod:`stmod.plugins.batch`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stmod import hookimpl
from stmod.plugins.commands import check, edit, inspect, ui
from stmod.plugins.commands import layout as layout_command

if TYPE_CHECKING:
    from stmod.core.registry import CommandRegistrar


@hookimpl
def stmod_register_commands(register: CommandRegistrar) -> None:
    register.add("plugins", configure=inspect.configure_plugins, run=inspect.run_plugins,
                 help="list installed plugins, their versions and the components each provides",
                 examples=("stmod-run plugins", "stmod-run plugins --json"))
    register.add("list", configure=inspect.configure_list, run=inspect.run_list,
                 help="list the components of one kind (backbones, layouts, modulators, blenders, annotators)",
                 examples=("stmod-run list layouts", "stmod-run list backbones"))
    register.add("check", configure=check.configure, run=check.run,
                 help="validate a job and its files without loading any model",
                 examples=("stmod-run check job.yaml", "stmod-run check job.yaml --steps 30 --print"))
    register.add("edit", configure=edit.configure_edit, run=edit.run_edit,
                 help="edit a clip: a job file and/or flags (see stmod-run edit --help)",
                 examples=("stmod-run edit job.yaml --out out/ --overwrite",
                           'stmod-run edit --video clip.mp4 --masks masks/ --prompt "a red car and a blue hat" '
                           '--region car="red car" --region hat="blue hat" --backbone sd15 --size keep '
                           "--control canny=0.8 --out out/"))
    register.add("demo", configure=edit.configure_demo, run=edit.run_demo,
                 help="edit a shapes-world clip with the shapes model trained here and report the measured "
                      "accuracy (CPU: about 25 s on 2 idle cores, README)",
                 examples=("stmod-run demo", "stmod-run demo --backbone tiny --frames 4 --steps 4 --out /tmp/demo"))
    register.add("layout", configure=layout_command.configure, run=layout_command.run,
                 help="compute a job's layout only: masks.mp4 and mask PNG folders (kmeans runs the inversion)",
                 examples=("stmod-run layout job.yaml", "stmod-run layout job.yaml --layout kmeans --out clusters/"))
    register.add("ui", configure=ui.configure, run=ui.run,
                 help="a browser page from a clip to an edit: draw regions, type prompts, run (extra stmod[ui])",
                 examples=("stmod-run ui", "stmod-run ui --port 7861"))
