"""Job validation before any model is loaded, and construction of the job's components.

:func:`check_job` is what ``stmod-run check`` runs and what ``edit`` runs first: it resolves every
component by name, validates its options, assigns regions to layout providers, and asks each
component to check its own files. Component factories are cheap by contract, so nothing heavy loads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from stmod.core.errors import (CheckpointError, ConfigError, InputError, LayoutError, MissingFilesError,
                               NotOwnedError, OutputExistsError)
from stmod.core.io.locks import exclusive_lock, lock_path_for, lock_problem
from stmod.core.io.ownership import (clean_stale_temporaries, input_overlap, name_problem, real, require_replaceable,
                                     write_problem)
from stmod.core.pipeline.cache import cache_root
from stmod.core.io.video import ClipPlan, plan_clip
from stmod.core.pipeline.compose import split_regions
from stmod.core.features import feature_requests
from stmod.core.protocols import (AttentionBlocks, Backbone, Blender, ChecksJob, ControlAnnotator, Extension,
                                  FeatureRecording, LayoutProvider, Modulator, VideoBackbone, size_multiple)
from stmod.core.registry import Registry
from stmod.core.tokens import TokenSpan
from stmod.core.types import ComponentRef, ControlSpec, EditSpec, as_tuple

__all__ = ["LayoutAssignment", "Components", "assign_layout_regions", "build_components", "check_job",
           "check_output_folder", "claim_output", "component_refs", "job_inputs", "output_note"]


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


@attrs.frozen(kw_only=True)
class Components:
    """The components an edit uses, built from the registry (no weights loaded); frozen once built
    (:func:`attrs.evolve` makes a changed copy).

    ``spans`` are the regions' token spans in the global prompt, found once when the job is checked
    with a tokenizer (``None`` until then, or when the backbone has no tokenizer before loading).
    ``clip`` is the job's clip as probed once by :func:`check_job` (``None`` before).
    """

    backbone: Backbone
    modulator: Modulator
    blender: Blender
    layouts: tuple[tuple[LayoutProvider, LayoutAssignment], ...] = attrs.field(converter=as_tuple)
    annotators: tuple[tuple[ControlAnnotator, ControlSpec], ...] = attrs.field(converter=as_tuple)
    extensions: tuple[tuple[Extension, ComponentRef], ...] = attrs.field(default=(), converter=as_tuple)
    spans: tuple[TokenSpan | None, ...] | None = None
    clip: ClipPlan | None = None


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
        extensions=[(make("extension", ref, f"extensions[{i}] ({ref.name})"), ref)
                    for i, ref in enumerate(spec.extensions)],
    )


def component_refs(spec: EditSpec) -> list[tuple[str, ComponentRef]]:
    """Every component the job names, with its place in the job (``layout[0]``, ``extensions[1]``, ...)."""
    return [("backbone", spec.backbone), ("modulator", spec.modulator), ("blend", spec.blend),
            *((f"layout[{i}]", ref) for i, ref in enumerate(spec.layout)),
            *((f"control[{i}]", c.annotator) for i, c in enumerate(spec.control)),
            *((f"extensions[{i}]", ref) for i, ref in enumerate(spec.extensions))]


def _option_paths(value: object) -> list[str]:
    """Every string (or path) in an option value, nested lists and mappings included."""
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _option_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _option_paths(v)]
    return []


def job_inputs(spec: EditSpec) -> list[tuple[str, Path, bool]]:
    """What the job reads, as ``(what, path, an output may lie inside it)`` for
    :func:`~stmod.core.io.ownership.input_overlap`: the clip, every existing file or folder an option of a
    component names (mask folders, model folders, ...), the cache, and the job's folder when it holds an
    input (an output may lie inside that one, as ``out/`` beside the job file does)."""
    found: list[tuple[str, Path, bool]] = [("video.path input", _resolved(spec, spec.video.path), False)]
    options: list[tuple[str, object]] = [(place, ref.options) for place, ref in component_refs(spec)]
    options += [(f"control[{i}].model", c.model) for i, c in enumerate(spec.control) if c.model]
    for place, value in options:
        for text in _option_paths(value):
            if "\0" in text or len(text) > 4096:
                continue
            path = _resolved(spec, Path(os.path.expanduser(text)))
            with contextlib.suppress(OSError):
                if path.exists():
                    found.append((f"{place} input", path, False))
    found.append(("stmod cache", cache_root(), False))
    base = real(spec.base_dir)
    if any(real(p) == base or base in real(p).parents for _, p, _ in found[:-1]):
        found.append(("job folder (it holds inputs)", spec.base_dir, True))
    return found


def _resolved(spec: EditSpec, path: Path) -> Path:
    return path if path.is_absolute() else spec.base_dir / path


def check_output_folder(spec: EditSpec) -> None:
    """The output folder can be written and may be replaced: a valid name, disjoint from every input,
    absent or empty or (with ``overwrite``) stmod's own, on a writable file system with room."""
    out = spec.output if spec.output.is_absolute() else spec.output.absolute()
    problem = name_problem(out)
    if problem is not None:
        raise InputError("output", str(out), problem)
    problem = input_overlap(out, job_inputs(spec))
    if problem is not None:
        raise NotOwnedError(str(out), f"the output folder {problem}; writing there could destroy an input, so "
                                      "choose another output")
    if out.is_symlink() and not out.is_dir():  # dangling, or to a file: what edit would refuse, check refuses
        raise NotOwnedError(str(out), "is a symbolic link that stmod did not create; remove it or choose another path")
    if out.exists() and not out.is_dir():
        raise InputError("output", str(out), "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not spec.overwrite:
            raise OutputExistsError(str(out))
        require_replaceable(out, "edit output")
    problem = write_problem(out)
    if problem is not None:
        raise InputError("output", str(out), problem)
    lock = lock_path_for(real(out))
    problem = lock_problem(lock)
    if problem is not None:  # a user's file named like stmod's lock: refused now, before any model loads
        raise NotOwnedError(str(lock), problem)


def output_note(spec: EditSpec) -> str | None:
    """What a run would say about the output folder when it is only in the way (it exists and the job does
    not overwrite it): a note for ``check``, which reports it without failing; other problems raise."""
    try:
        check_output_folder(spec)
    except OutputExistsError:
        return (f"the output folder {spec.output} exists: a run needs overwrite=True to replace it, "
                "or choose another output")
    return None


@contextlib.contextmanager
def claim_output(spec: EditSpec) -> Iterator[None]:
    """Hold the output folder's lock for the ``with`` block, check it again under the lock (another run
    may have written it meanwhile), and remove the temporaries an interrupted run left beside it."""
    out = real(spec.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(lock_path_for(out), what=f"output folder {out}",
                        fix="wait for it to finish or choose another output"):
        check_output_folder(spec)
        clean_stale_temporaries(out.parent, name=out.name)
        yield


def _check_nul_bytes(spec: EditSpec) -> None:
    """A NUL byte cannot be part of a file name: name the path that has one before anything opens it."""
    named: list[tuple[str, str | os.PathLike[str]]] = [("video.path", spec.video.path), ("output", spec.output)]
    for place, ref in component_refs(spec):
        named += [(f"{place}.{key}", text) for key, value in ref.options.items() for text in _option_paths(value)]
    named += [(f"control[{i}].model", c.model) for i, c in enumerate(spec.control) if c.model]
    for place, value in named:
        if "\0" in os.fspath(value):
            raise InputError(place, os.fspath(value), "contains a NUL byte, which no file name can hold; remove it")


def _check_feature_blocks(spec: EditSpec, components: Components) -> None:
    """A layout's transformer ``block`` (K-Means features) must be a block of the backbone: refused on a UNet
    backbone, and past the last block when the backbone can tell its count before loading."""
    backbone, name = components.backbone, spec.backbone.name
    for request in feature_requests(provider for provider, _ in components.layouts):
        if request.block is None:
            continue
        if not isinstance(backbone, AttentionBlocks):
            raise LayoutError(f"layout option block: {request.block} picks a transformer block, and backbone "
                              f"{name!r} has UNet levels, not blocks; remove block (level picks the UNet level)")
        count = backbone.attention_blocks(spec.base_dir)
        if count is not None and request.block >= count:
            raise LayoutError(f"layout option block: {request.block} is not a block of backbone {name!r} (its "
                              f"blocks are 0-{count - 1}: diffusers' transformer.blocks.0 to blocks.{count - 1}); "
                              "choose one of those")


def _check_size(spec: EditSpec, backbone: Backbone) -> None:
    """Each side of ``video.size`` a multiple of what the backbone needs (:class:`~stmod.core.protocols.SizeRule`),
    else the nearest sizes that are."""
    multiple = size_multiple(backbone)
    width, height = spec.video.size
    if width % multiple or height % multiple:
        def near(v: int) -> list[int]:
            return sorted({max(64, v // multiple * multiple), -(-v // multiple) * multiple})
        choices = [f"{w}x{h}" for w in near(width) for h in near(height)]
        raise InputError("video.size", [width, height], f"backbone {spec.backbone.name!r} needs sides in multiples of "
                         f"{multiple}; use {' or '.join(choices)} (--size keep rounds the clip's own size down)")


def check_job(spec: EditSpec, registry: Registry, *, check_output: bool = True) -> Components:
    """Validate ``spec`` and its files without loading a model; returns the built components."""
    _check_nul_bytes(spec)
    components = build_components(spec, registry)
    _check_size(spec, components.backbone)  # before the clip's probe, which warns of a size that upscales
    clip = plan_clip(spec.video)  # the one probe of the clip: providers and the reader share it
    if check_output:
        check_output_folder(spec)
    components = attrs.evolve(components, clip=clip)
    missing: list[CheckpointError] = []  # weights: all reported at once, after the other checks
    for annotator, _ in components.annotators:
        try:
            annotator.check(spec)
        except CheckpointError as error:
            missing.append(error)
    for extension, _ in components.extensions:
        if isinstance(extension, ChecksJob):
            extension.check(spec)
    for provider, assignment in components.layouts:
        provider.check(spec, assignment.regions, clip)
        if provider.feature_request is not None and not isinstance(components.modulator, FeatureRecording):
            raise ConfigError(f"{assignment.place} needs attention features recorded during inversion, which "
                              f"modulator {spec.modulator.name!r} cannot record; use modulator: st-layout",
                              key="modulator")
    _check_feature_blocks(spec, components)
    try:
        components.backbone.check(spec)
    except CheckpointError as error:
        missing.append(error)
    MissingFilesError.raise_any(missing)
    if isinstance(components.backbone, VideoBackbone):
        components.backbone.check_clip(clip)
    return components

