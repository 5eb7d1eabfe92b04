"""Built-in plugin ``stmod.extensions``: the official VideoGrain pipeline's parts beside ST-Layout attention.

One module per extension; this list only registers them (by reference: their modules import torch).
"""

from __future__ import annotations

from stmod import hookimpl


@hookimpl
def stmod_register_extensions(register) -> None:
    register.add("flatten", "stmod.plugins.extensions.flatten:FlattenExtension",
                 options="stmod.plugins.extensions.flatten:FlattenOptions",
                 summary="FLATTEN trajectory attention along optical-flow trajectories (the official flatten_res)")
