"""stmod: zero-shot multi-grained video editing (ST-Modulator / VideoGrain) as a plugin framework.

The public surface for users and plugin authors; nothing else is needed to write a plugin::

    from stmod import hookimpl, LayoutMasks, LayoutRequest

    @hookimpl
    def stmod_register_layout_providers(register):
        register.add("mine", MyProvider, summary="...")

and to run an edit from Python (``docs/python.md``)::

    from stmod import Editor

    result = Editor.from_pretrained("shapes").run("job.yaml")

Names other than the markers are loaded on first use (module ``__getattr__``), so ``import stmod``
(which every plugin does) stays cheap: no torch, no diffusers. Subpackages: :mod:`stmod.core`
(values, protocols, the ST-Layout engine, the pipeline), :mod:`stmod.plugins` (hooks, plugin manager,
built-in blenders, modulator and commands), :mod:`stmod.backbones`, :mod:`stmod.layouts`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from stmod.api import Editor
    from stmod.core.errors import (CheckpointError, ConfigError, EditCancelled, InputError, LayoutError,
                                   MissingDependencyError, OutputExistsError, PromptError, StmodError, UsageError)
    from stmod.core.features import FeatureMaps, FeatureRequest, InversionFeatures
    from stmod.core.io.video import ClipPlan
    from stmod.core.pipeline.editor import EditResult, LayoutResult
    from stmod.core.budget.job import ModelFootprint
    from stmod.core.protocols import (AttentionBlocks, AttentionLevels, Backbone, Blender, ChecksJob, ChecksWeights, CompositesFrames,
                                      ConditionsText, ControlAnnotator, DescribesFootprint, Extension, FeatureRecording, FollowsSteps, LayoutProvider,
                                      LayoutReporting, Modulator, Phase, PreparesFromClip, RecordsAttention,
                                      SizeRule, Tokenizer)
    from stmod.core.types import (BlendContext, EditSpec, ExtensionInput, LayoutMasks, LayoutReport, LayoutRequest,
                                  ModulationConfig, ModulationInput, Range, Region, TextConditioning, number)

#: Decorator for hook implementations in plugins: ``@stmod.hookimpl def stmod_register_...``.
hookimpl = pluggy.HookimplMarker("stmod")

#: Decorator for hook specifications; only stmod itself and hosts extending it need this.
hookspec = pluggy.HookspecMarker("stmod")

#: Public name → the module that defines it (imported on first access).
_LAZY = {
    **dict.fromkeys(("StmodError", "UsageError", "ConfigError", "InputError", "LayoutError", "PromptError",
                     "CheckpointError", "OutputExistsError", "MissingDependencyError"), "stmod.core.errors"),
    **dict.fromkeys(("EditSpec", "Region", "ModulationConfig", "LayoutMasks", "LayoutRequest", "LayoutReport",
                     "ModulationInput", "ExtensionInput", "TextConditioning", "BlendContext", "Range", "number"),
                    "stmod.core.types"),
    **dict.fromkeys(("Backbone", "LayoutProvider", "Modulator", "Blender", "ControlAnnotator", "Extension", "Phase",
                     "Tokenizer", "LayoutReporting", "ConditionsText", "FeatureRecording", "RecordsAttention",
                     "DescribesFootprint", "ChecksJob", "PreparesFromClip", "FollowsSteps", "AttentionLevels", "AttentionBlocks",
                     "ChecksWeights", "CompositesFrames", "SizeRule"),
                    "stmod.core.protocols"),
    "ModelFootprint": "stmod.core.budget.job",
    **dict.fromkeys(("FeatureRequest", "FeatureMaps", "InversionFeatures"), "stmod.core.features"),
    **dict.fromkeys(("EditResult", "LayoutResult"), "stmod.core.pipeline.editor"),
    "Editor": "stmod.api",
    "EditCancelled": "stmod.core.errors",
    "ClipPlan": "stmod.core.io.video",
}

__all__ = ["hookimpl", "hookspec", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("stmod")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0+unknown"
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stmod' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
