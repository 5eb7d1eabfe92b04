"""Built-in plugin: the ``sd15``, ``tiny``, ``shapes``, ``wan`` and ``shapes-wan`` backbones and the ControlNet annotators."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stmod import hookimpl

if TYPE_CHECKING:
    from stmod.core.registry import ComponentRegistrar

# By reference ("module:attribute"): these modules import torch, diffusers and OpenCV, which only a
# job that uses the component should pay for (``stmod-run --help`` and ``list`` do not).
_ANN = "stmod.backbones.annotators:"


@hookimpl
def stmod_register_backbones(register: ComponentRegistrar) -> None:
    register.add("sd15", "stmod.backbones.sd15:StableDiffusionBackbone",
                 options="stmod.backbones.sd15:SD15Options",
                 summary="Stable Diffusion 1.5 family (hub id, diffusers folder or .safetensors) + ControlNets")
    register.add("tiny", "stmod.backbones.tiny:TinyBackbone", options="stmod.backbones.tiny:TinyOptions",
                 summary="SD-1.5-shaped random-weight model for fast tests (pictures are not meaningful)")
    register.add("shapes", "stmod.backbones.shapes:ShapesBackbone",
                 options="stmod.backbones.shapes:ShapesOptions",
                 summary="small SD-1.5-layout model trained on the shapes world (colours, shapes, parts; 128 px)")
    register.add("wan", "stmod.backbones.wan:WanBackbone", options="stmod.backbones.wan:WanOptions",
                 summary="Wan 2.1 text-to-video transformer (hub id or diffusers folder; flow matching, 1 + 4k frames)")
    register.add("shapes-wan", "stmod.backbones.shapes_wan:ShapesWanBackbone",
                 options="stmod.backbones.shapes_wan:ShapesWanOptions",
                 summary="tiny Wan-2.1-layout model trained on the shapes world (flow matching, 1 + 4k frames; 128 px)")


@hookimpl
def stmod_register_annotators(register: ComponentRegistrar) -> None:
    register.add("canny", _ANN + "CannyAnnotator", options=_ANN + "CannyOptions",
                 summary="Canny edges (controlnet-aux; no weights needed)")
    register.add("depth", _ANN + "DepthAnnotator", options=_ANN + "WeightsOptions",
                 summary="MiDaS depth (controlnet-aux; needs annotator weights)")
    register.add("openpose", _ANN + "OpenposeAnnotator", options=_ANN + "OpenposeOptions",
                 summary="OpenPose body (hand, face) keypoints (controlnet-aux; needs annotator weights)")
    register.add("frames", _ANN + "FramesAnnotator", options=_ANN + "FramesOptions",
                 summary="Precomputed control images from a folder")
