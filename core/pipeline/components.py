"""Job validation before any model is loaded, and construction of the job's components.

:func:`check_job` is what ``stmod-run check`` runs and what ``edit`` runs first: it resolves every
component by name, validates its options, assigns regions to layout providers, and asks each
component to check its own files. Component factories are cheap by contract, so nothing heavy loads.
"""

from __future__ import annotations

from typing import Any

import attrs

from stmod.core.errors import ConfigError, InputError, OutputExistsError
from stmod.core.io.video import probe_video, select_frames
from stmod.core.pipeline.compose import split_regions
from stmod.core.protocols import Backbone, Blender, ControlAnnotator, FeatureRecording, LayoutProvider, Modulator
from stmod.core.registry import Registry
from stmod.core.tokens import TokenSpan
from stmod.core.types import ComponentRef, ControlSpec, EditSpec

__all__ = ["LayoutAssignment", "Components", "assign_layout_regions", "build_components", "check_job"]


@attrs.frozen(kw_only=True)
class LayoutAssignment:
    """One layout provider of the job and the regions it supplies."""

    ref: ComponentRef
    regions: tuple[str, ...]
    place: str


def assign_layout_regions(spec: EditSpec) -> tuple[LayoutAssignment, ...]:
    """Split the job's regions between its layout providers.

    A layout entry may list ``regions: [a, b]``; at most one entry may omit it and then supplies every
    region not listed elsewhere (see :func:`stmod.core.pipeline.compose.split_regions`).
    """
    if not spec.layout:
        if spec.regions:
            raise ConfigError("the job has regions but no layout; add e.g. layout: {name: masks, dir: masks/}",
                              key="layout")
        return ()
    claims: list[tuple[str, tuple[str, ...] | None]] = []
    for i, ref in enumerate(spec.layout):
        listed = ref.options.get("regions")
        if isinstance(listed, str):
            listed = [listed]
        if listed is not None and (not isinstance(listed, (list, tuple)) or not all(isinstance(n, str) for n in listed)):
            raise ConfigError(f"layout[{i}].regions must be a list of region names, got {listed!r}")
        claims.append((ref.name, None if listed is None else tuple(listed)))
    assigned = split_regions(spec.region_names, claims)
    return tuple(
        LayoutAssignment(ref=attrs.evolve(ref, options={k: v for k, v in ref.options.items() if k != "regions"}),
                         regions=regions, place=f"layout[{i}] ({ref.name})")
        for i, (ref, regions) in enumerate(zip(spec.layout, assigned))
    )


@attrs.define(kw_only=True)
class Components:
    """The components an edit uses, built from the registry (no weights loaded).

    ``spans`` are the regions' token spans in the global prompt, found once when the job is checked
    with a tokenizer (``None`` until then, or when the backbone has no tokenizer before loading).
    """

    backbone: Backbone
    modulator: Modulator
    blender: Blender
    layouts: list[tuple[LayoutProvider, LayoutAssignment]]
    annotators: list[tuple[ControlAnnotator, ControlSpec]]
    spans: tuple[TokenSpan | None, ...] | None = None


def build_components(spec: EditSpec, registry: Registry) -> Components:
    """Create every component the job names, validating their options."""

    def make(kind: str, ref: ComponentRef, place: str) -> Any:
        return registry.create(kind, ref.name, ref.options, place=place)

    return Components(
        backbone=make("backbone", spec.backbone, f"backbone ({spec.backbone.name})"),
        modulator=make("modulator", spec.modulator, f"modulator ({spec.modulator.name})"),
        blender=make("blender", spec.blend, f"blend ({spec.blend.name})"),
        layouts=[(make("layout", a.ref, a.place), a) for a in assign_layout_regions(spec)],
        annotators=[(make("annotator", c.annotator, f"control[{i}] ({c.annotator.name})"), c)
                    for i, c in enumerate(spec.control)],
    )


def _check_output(spec: EditSpec) -> None:
    out = spec.output if spec.output.is_absolute() else spec.output.absolute()
    if out.exists() and not out.is_dir():
        raise InputError("output", str(out), "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not spec.overwrite:
        raise OutputExistsError(str(out))


def check_job(spec: EditSpec, registry: Registry, *, check_output: bool = True) -> Components:
    """Validate ``spec`` and its files without loading a model; returns the built components."""
    select_frames(spec.video, probe_video(spec.video.path).frames)
    if check_output:
        _check_output(spec)
    components = build_components(spec, registry)
    for annotator, _ in components.annotators:
        annotator.check(spec)
    for provider, assignment in components.layouts:
        provider.check(spec, assignment.regions)
        if provider.feature_request is not None and not isinstance(components.modulator, FeatureRecording):
            raise ConfigError(f"{assignment.place} needs attention features recorded during inversion, which "
                              f"modulator {spec.modulator.name!r} cannot record; use modulator: st-layout",
                              key="modulator")
    components.backbone.check(spec)
    return components

