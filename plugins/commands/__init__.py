"""Built-in ``stmod-run`` subcommands, registered through ``stmod_register_commands`` like any plugin's.

``eval`` and ``batch`` are built-in plugins of their own (:mod:`stmod.plugins.eval`,
:mod:`stmod.plugins.batch`).
"""

from __future__ import annotations

from stmod import hookimpl
from stmod.plugins.commands import check, edit, inspect, ui
from stmod.plugins.commands import layout as layout_command


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
                 help="edit a shapes-world clip with the shapes model trained here and report the measured "
                      "accuracy (CPU, ~1 min)")
    register.add("layout", configure=layout_command.configure, run=layout_command.run,
                 help="compute a job's layout only: masks.mp4 and mask PNG folders (kmeans runs the inversion)")
    register.add("ui", configure=ui.configure, run=ui.run,
                 help="a browser page from a clip to an edit: draw regions, type prompts, run (extra stmod[ui])")
