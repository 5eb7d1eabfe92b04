"""Built-in plugin ``stmod.layouts``: registers the ``masks``, ``boxes``, ``grabcut``, ``kmeans`` and ``sam2`` layout providers.

It goes through the same hook as third-party plugins. Example job entries::

    layout:
      - name: masks          # one folder of PNGs per region, named like the region
        dir: masks/
      - name: boxes
        units: normalized
        boxes:
          car: {0: [0.10, 0.40, 0.40, 0.80], 15: [0.50, 0.40, 0.80, 0.80]}
      - name: grabcut        # a box (and clicks) on a keyframe, tracked by optical flow + GrabCut; no weights
        prompts: {dog: {0: {box: [40, 60, 200, 220], points: [[120, 140]]}}}
      - name: kmeans         # clusters of self-attention features found during inversion
        clusters: 4
        assign: {trees: tree, sky: [2, 3]}
      - name: sam2           # needs the extra stmod[sam2] and a SAM 2 checkpoint
        checkpoint: sam2.1_hiera_tiny.pt
        prompts: {man: {0: {points: [[120, 200]]}}}
"""

from __future__ import annotations

from stmod import hookimpl
from stmod.core.registry import ComponentRegistrar

# Registered by reference: the providers import torch and OpenCV only when a job uses them.

__all__ = ["stmod_register_layout_providers"]


@hookimpl
def stmod_register_layout_providers(register: ComponentRegistrar) -> None:
    """Register ``masks`` (PNG folders: SAM-Track, VideoGrain, DAVIS, SAM-Track WebUI), ``boxes``, ``grabcut``,
    ``kmeans``, ``sam2``."""
    register.add("masks", "stmod.layouts.masks:MaskFolderProvider",
                 options="stmod.layouts.masks:MasksOptions",
                 summary="region masks from PNG folders (SAM-Track / VideoGrain / DAVIS / SAM-Track WebUI)")
    register.add("boxes", "stmod.layouts.boxes:BoxLayoutProvider",
                 options="stmod.layouts.boxes:BoxesOptions",
                 summary="region masks from boxes at keyframes, linearly interpolated")
    register.add("grabcut", "stmod.layouts.grabcut:GrabcutLayoutProvider",
                 options="stmod.layouts.grabcut:GrabcutOptions",
                 summary="region masks from a box (and clicks) on keyframes: GrabCut, carried by optical flow (no weights)")
    register.add("kmeans", "stmod.layouts.kmeans:KMeansLayoutProvider",
                 options="stmod.layouts.kmeans:KMeansOptions",
                 summary="regions from K-Means on self-attention features recorded during inversion (no masks needed)")
    register.add("sam2", "stmod.layouts.sam2:Sam2LayoutProvider",
                 options="stmod.layouts.sam2:Sam2Options",
                 summary="region masks tracked by SAM 2 from clicks or boxes on a few frames (extra stmod[sam2])")
