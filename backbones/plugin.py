"""Built-in plugin: the ``sd15``, ``tiny`` and ``shapes`` backbones and the ControlNet annotators."""

from __future__ import annotations

from stmod import hookimpl
from stmod.backbones import annotators
from stmod.backbones.sd15 import SD15Options, StableDiffusionBackbone
from stmod.backbones.shapes import ShapesBackbone, ShapesOptions
from stmod.backbones.tiny import TinyBackbone, TinyOptions


@hookimpl
def stmod_register_backbones(register) -> None:
    register.add("sd15", StableDiffusionBackbone, options=SD15Options,
                 summary="Stable Diffusion 1.5 family (hub id, diffusers folder or .safetensors) + ControlNets")
    register.add("tiny", TinyBackbone, options=TinyOptions,
                 summary="SD-1.5-shaped random-weight model for fast tests (pictures are not meaningful)")
    register.add("shapes", ShapesBackbone, options=ShapesOptions,
                 summary="small SD-1.5-layout model trained on the shapes world (colours, shapes, parts; 128 px)")


@hookimpl
def stmod_register_annotators(register) -> None:
    register.add("canny", annotators.CannyAnnotator, options=annotators.CannyOptions,
                 summary="Canny edges (controlnet-aux; no weights needed)")
    register.add("depth", annotators.DepthAnnotator, options=annotators.WeightsOptions,
                 summary="MiDaS depth (controlnet-aux; needs annotator weights)")
    register.add("openpose", annotators.OpenposeAnnotator, options=annotators.WeightsOptions,
                 summary="OpenPose body keypoints (controlnet-aux; needs annotator weights)")
    register.add("frames", annotators.FramesAnnotator, options=annotators.FramesOptions,
                 summary="Precomputed control images from a folder")
