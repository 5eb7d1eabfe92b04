"""Built-in plugin ``stmod.layouts``: registers the ``masks`` and ``boxes`` layout providers.

It goes through the same hook as third-party plugins. Example job entries::

    layout:
      - name: masks          # one folder of PNGs per region, named like the region
        dir: masks/
      - name: boxes
        units: normalized
        boxes:
          car: {0: [0.10, 0.40, 0.40, 0.80], 15: [0.50, 0.40, 0.80, 0.80]}
"""

from __future__ import annotations

from stmod import hookimpl
from stmod.layouts.boxes import BoxesOptions, BoxLayoutProvider
from stmod.layouts.masks import MaskFolderProvider, MasksOptions
from stmod.plugins.registry import ComponentRegistrar

__all__ = ["stmod_register_layout_providers"]


@hookimpl
def stmod_register_layout_providers(register: ComponentRegistrar) -> None:
    """Register ``masks`` (PNG folders: SAM-Track, VideoGrain, DAVIS, SAM-Track WebUI) and ``boxes``."""
    register.add("masks", MaskFolderProvider, options=MasksOptions,
                 summary="region masks from PNG folders (SAM-Track / VideoGrain / DAVIS / SAM-Track WebUI)")
    register.add("boxes", BoxLayoutProvider, options=BoxesOptions,
                 summary="region masks from boxes at keyframes, linearly interpolated")
