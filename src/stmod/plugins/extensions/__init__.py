"""Built-in plugin ``stmod.extensions``: the official VideoGrain pipeline's parts beside ST-Layout attention.

One module per extension; this list only registers them (by reference: their modules import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stmod import hookimpl

if TYPE_CHECKING:
    from stmod.core.registry import ComponentRegistrar


@hookimpl
def stmod_register_extensions(register: ComponentRegistrar) -> None:
    register.add("freeu", "stmod.plugins.extensions.freeu:FreeUExtension",
                 options="stmod.plugins.extensions.freeu:FreeUOptions",
                 summary="FreeU through diffusers' enable_freeu (official values b1 1.2, b2 1.5, s1 = s2 = 1)")
    register.add("pnp", "stmod.plugins.extensions.pnp:PnPExtension",
                 options="stmod.plugins.extensions.pnp:PnPOptions",
                 summary="PnP: the inversion's up-block features and self-attention q/k injected in the first "
                         "inject_step denoising steps (official use_pnp)")
    register.add("flatten", "stmod.plugins.extensions.flatten:FlattenExtension",
                 options="stmod.plugins.extensions.flatten:FlattenOptions",
                 summary="FLATTEN trajectory attention along optical-flow trajectories (the official flatten_res)")
