"""Job files: YAML → attrs values, with errors that name the key, its place and the fix.

The structurer below is deliberately small: it knows the handful of types our values use (``str``,
``int``, ``float``, ``bool``, ``Path``, ``Literal``, optionals, tuples, mappings and nested attrs
classes) and rejects everything it does not expect. A misspelled key is an error with the closest
valid key, never a silent default.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import attrs
import yaml

from stmod.core.errors import ConfigError, InputError, show
from stmod.core.io.images import regular_file_problem
from stmod.core.protocols import JobFormat
from stmod.core.types import RANGE_KEY, ComponentRef, EditSpec, Range, Region
from stmod.core.yamlfile import load_yaml

__all__ = ["structure", "unstructure", "load_mapping", "job_from_mapping", "load_job", "dump_job", "apply_overrides"]


def _describe(value: Any) -> str:
    return f"{show(value)} ({type(value).__name__})"


def _close(word: str, choices: list[str], *, cutoff: float) -> list[str]:
    """The closest choice to a misspelling; none for a long text (difflib is quadratic in it)."""
    return difflib.get_close_matches(word, choices, n=1, cutoff=cutoff) if len(word) <= 100 else []


def _join(place: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{place}[{key}]"
    return f"{place}.{key}" if place else key


#: No number in a job may reach past a signed 64-bit integer: torch, NumPy and files would overflow.
_INT_LIMIT = 2**63 - 1


def check_numbers(value: Any, place: str = "", *, source: str | None = None) -> None:
    """Refuse a NaN or infinite float, or an integer past 64 bits, anywhere in ``value``.

    Typed fields get their own :class:`~stmod.core.types.Range` from the structurer; this covers the
    values of untyped fields (mappings, ``Any``) that a plugin's converter reads itself (box corners,
    click points, cluster ids), so no non-finite number reaches a component.
    """
    stack = [(value, place)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, Mapping):
            stack.extend((v, _join(where, str(k))) for k, v in item.items())
            stack.extend((k, f"{where or 'the job'} key") for k in item if isinstance(k, (int, float)))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, _join(where, i)) for i, v in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where} must be a finite number, got {item}", place=where, source=source)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > _INT_LIMIT:
            raise ConfigError(f"{where} must be an integer of at most 64 bits (|n| <= 2**63 - 1), got {show(item)}",
                              place=where, source=source)


class _Structurer:
    def __init__(self, base_dir: Path | None, source: str | None) -> None:
        self.base_dir, self.source = base_dir, source

    def error(self, message: str, **data: Any) -> ConfigError:
        return ConfigError(message, source=self.source, **data)

    def convert(self, tp: Any, value: Any, place: str, rng: Range | None = None) -> Any:
        """``value`` as type ``tp``; ``rng`` is the field's :class:`Range` (numbers, and tuple items)."""
        origin = typing.get_origin(tp)
        if tp is Any:
            check_numbers(value, place, source=self.source)
            return value
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self.convert(inner, value, place, rng)
        if origin is Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                close = _close(str(value), [str(c) for c in choices], cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(f"{place} must be one of {', '.join(map(repr, choices))}, got {_describe(value)}{hint}")
            return value
        if tp is ComponentRef:
            return self.component_ref(value, place)
        if tp is Region:
            return self.structure(Region, value, place)
        if attrs.has(tp):
            return self.structure(tp, value, place)
        if origin is tuple:
            return self.tuple_(tp, value, place, rng)
        if origin in (Mapping, dict, typing.Mapping) or tp in (dict, Mapping):
            if not isinstance(value, Mapping):
                raise self.error(f"{place} must be a mapping, got {_describe(value)}")
            check_numbers(value, place, source=self.source)  # what the field's converter reads is untyped here
            return dict(value)
        if tp is Path:
            if not isinstance(value, (str, Path)):
                raise self.error(f"{place} must be a path, got {_describe(value)}")
            path = Path(value).expanduser()
            if not path.is_absolute() and self.base_dir is not None:
                path = self.base_dir / path
            return Path(os.path.normpath(path))  # "inputs/../result" reads as "result" in messages
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(f"{place} must be true or false, got {_describe(value)}")
            return value
        if tp is int or tp is float:
            return self.number(tp, value, place, rng or Range())
        if tp is str:
            if not isinstance(value, str):
                raise self.error(f"{place} must be a string, got {_describe(value)} (quote it in YAML)")
            return value
        raise TypeError(f"cannot structure {tp!r} at {place}")  # a bug in a value class, not user input

    def number(self, tp: type, value: Any, place: str, rng: Range) -> int | float:
        """The one rule for every number of a job: the right type, finite, and within its field's range."""
        kind = "an integer" if tp is int else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and isinstance(value, float)):
            raise self.error(f"{place} must be {kind}, got {_describe(value)}")
        if rng.problem(value) is not None:
            raise self.error(f"{place} must be {rng.describe(kind)}, got {show(value)}", place=place)
        try:
            return float(value) if tp is float else value
        except OverflowError:  # an int past float's range: out of range whatever the field
            raise self.error(f"{place} must be {rng.describe(kind)}, got {show(value)}", place=place) from None

    def tuple_(self, tp: Any, value: Any, place: str, rng: Range | None = None) -> tuple[Any, ...]:
        args = typing.get_args(tp)
        if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:  # a single item where a list is allowed
                return (self.convert(args[0], value, _join(place, 0), rng),)
            raise self.error(f"{place} must be a list of {len(args)} items, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.convert(args[0], v, _join(place, i), rng) for i, v in enumerate(value))
        if len(value) != len(args):
            raise self.error(f"{place} must be a list of {len(args)} items, got {_describe(value)}")
        return tuple(self.convert(a, v, _join(place, i), rng) for i, (a, v) in enumerate(zip(args, value)))

    def component_ref(self, value: Any, place: str) -> ComponentRef:
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping) or "name" not in value:
            raise self.error(
                f"{place} must be a component name or a mapping with 'name' and its options, got {_describe(value)}",
                key="name", place=place,
            )
        options = {k: v for k, v in value.items() if k != "name"}
        return self.build(ComponentRef, {"name": value["name"], "options": options}, place)

    def structure(self, cls: type, value: Any, place: str) -> Any:
        if not isinstance(value, Mapping):
            raise self.error(f"{place or 'the job'} must be a mapping, got {_describe(value)}")
        fields = attrs.fields_dict(cls)
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, item in value.items():
            if key not in fields or not fields[key].init:
                valid = [name for name, f in fields.items() if f.init]
                close = _close(str(key), valid, cutoff=0.5)
                where = f"in {place}" if place else "at the top level"
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
                raise self.error(
                    f"unknown key {show(key)} {where}{hint}", key=str(key), place=place,
                    suggestion=close[0] if close else None,
                )
            kwargs[key] = self.convert(hints[key], item, _join(place, key), fields[key].metadata.get(RANGE_KEY))
        return self.build(cls, kwargs, place)

    def build(self, cls: type, kwargs: dict[str, Any], place: str) -> Any:
        missing = [
            name for name, f in attrs.fields_dict(cls).items()
            if f.init and f.default is attrs.NOTHING and name not in kwargs
        ]
        if missing:
            where = f" in {place}" if place else ""
            raise self.error(f"missing required key {missing[0]!r}{where}", key=missing[0], place=place)
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            where = f"{place}: " if place else ""
            raise self.error(f"{where}{exc}", place=place) from exc


def structure(cls: type, value: Any, *, place: str = "", base_dir: Path | None = None, source: str | None = None) -> Any:
    """Build attrs class ``cls`` from a plain mapping, rejecting unknown keys.

    :param place: dotted location of ``value``, used in error messages.
    :param base_dir: folder that relative ``Path`` values are resolved against.
    :param source: file name shown in error messages.
    :raises ConfigError: on the first problem, naming key, place and the closest valid key.
    """
    return _Structurer(base_dir, source).convert(cls, value, place)


def unstructure(value: Any) -> Any:
    """Plain YAML-ready data from values built by :func:`structure` (the inverse, up to paths)."""
    if isinstance(value, ComponentRef):
        return {"name": value.name, **{k: unstructure(v) for k, v in value.options.items()}}
    if isinstance(value, EditSpec):
        data = {f.name: unstructure(getattr(value, f.name)) for f in attrs.fields(EditSpec) if f.name != "base_dir"}
        data["regions"] = {r.name: r.prompt for r in value.regions}
        return data
    if attrs.has(type(value)):
        return {f.name: unstructure(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, (list, tuple)):
        return [unstructure(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): unstructure(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def load_mapping(path: Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping."""
    problem = regular_file_problem(path)
    if problem is not None:  # a FIFO or a device would block the read
        raise InputError("job", str(path), problem)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError("job", str(path), f"cannot read the job file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise InputError("job", str(path), f"is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                                           f"{exc.start}); save it as UTF-8") from exc
    data = load_yaml(text, source=str(path))  # duplicate keys and alias bombs are refused there
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"a job file must hold a mapping, got {type(data).__name__}", source=str(path))
    return data


def _normalise_regions(data: dict[str, Any]) -> dict[str, Any]:
    """Accept ``regions`` as ``{name: prompt}`` (the usual form) as well as a list of mappings."""
    regions = data.get("regions")
    if isinstance(regions, Mapping):
        data = dict(data)
        data["regions"] = [{"name": str(k), "prompt": "" if v is None else v} for k, v in regions.items()]
    return data


def job_from_mapping(data: Mapping[str, Any], *, base_dir: Path, source: str | None = None) -> EditSpec:
    """An :class:`EditSpec` from a job mapping; relative paths are taken relative to ``base_dir``."""
    data = _normalise_regions(dict(data))
    if "base_dir" in data:
        raise ConfigError("unknown key 'base_dir' at the top level (it is set from the job file's folder)",
                          key="base_dir", source=source)
    if isinstance(data.get("video"), str):  # the shorthand ``video: clip.mp4`` is ``video: {path: clip.mp4}``
        data = {**data, "video": {"path": data["video"]}}
    structurer = _Structurer(base_dir, source)
    spec = structurer.structure(EditSpec, data, "")
    return attrs.evolve(spec, base_dir=base_dir)


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` (from CLI flags) into a job mapping; nested mappings merge key by key.

    A component given as a plain name in the file (``blend: latent``) is widened to a mapping first, so
    an override of one of its options keeps the name; an override naming a *different* component
    replaces it whole (the old component's options do not apply to the new one).
    """
    merged = dict(data)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, str):
            current = {"path": current} if key == "video" else {"name": current}
        if isinstance(value, Mapping) and isinstance(current, Mapping) and "name" in value and current.get("name") != value["name"]:
            current = {}
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = apply_overrides(current, value)
        else:
            merged[key] = value
    return merged


def load_job(path: Path, overrides: Mapping[str, Any] | None = None, *, allow_unsupported: bool = False,
             prompt_index: int | None = None, formats: Iterable[JobFormat] = ()) -> EditSpec:
    """Read, override and validate a job file: an stmod job, or a file in one of ``formats``.

    Paths in an stmod job are relative to its folder. A file that a format detects (the official
    VideoGrain configs, through the ``stmod.official`` plugin: ``registry.job_formats.values()``) is
    converted first; its paths are relative to what the format says (``paths``).
    ``allow_unsupported`` lets a converter drop features stmod does not implement; ``prompt_index``
    (``--prompt-index``) picks one of the several edits a format's file may list (it reaches the
    converter only when given, so converters written before it keep working); a converter with an
    ``overrides`` parameter also receives ``overrides``, which are merged over what it returns.
    """
    path = Path(path)
    data, base_dir = load_mapping(path), path.resolve().parent
    for fmt in formats:
        if fmt.detect(data):
            chosen: dict[str, Any] = {} if prompt_index is None else {"prompt_index": prompt_index}
            if overrides and _takes(fmt.convert, "overrides"):  # its messages can then match what will run
                chosen["overrides"] = overrides
            data = dict(fmt.convert(data, source=path, allow_unsupported=allow_unsupported, **chosen))
            base_dir = Path.cwd() if fmt.paths == "cwd" else base_dir
            break
    else:
        if prompt_index is not None:
            raise ConfigError(f"prompt_index {prompt_index} chooses among the editing prompts of a file that lists "
                              "several (an official VideoGrain config); an stmod job has one prompt: drop "
                              "prompt_index=", key="prompt_index", source=str(path))
    data = apply_overrides(data, overrides or {})
    return job_from_mapping(data, base_dir=base_dir, source=str(path))


def _takes(function: Any, parameter: str) -> bool:
    """Whether ``function`` accepts the keyword argument ``parameter``."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass only what every converter takes
        return False
    return parameter in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def dump_job(spec: EditSpec, *, rerunnable: bool = False) -> str:
    """The resolved job as YAML (what ``stmod-run check --print`` shows).

    :param rerunnable: what an output folder's ``config.yaml`` holds: a job that reruns from any working
        directory (see :func:`rerunnable_job`).
    """
    data = rerunnable_job(spec) if rerunnable else unstructure(spec)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def rerunnable_job(spec: EditSpec) -> dict[str, Any]:
    """``spec`` as a job mapping that means the same wherever the file lies and whatever the working directory.

    Top-level paths are absolute already; a component option (``layout.dir``, a backbone's ``model``
    folder, a checkpoint, ...) is a string its component resolves against the job's folder, so one that
    names an existing file or folder there becomes absolute (a hub id names none and stays). ``overwrite``
    is dropped: rerunning a finished job must not replace its results unless asked (``--overwrite``).
    """
    data = unstructure(spec)
    data.pop("overwrite", None)

    def absolute(options: dict[str, Any]) -> dict[str, Any]:
        return {key: value if key == "name" else _absolute_option(value, spec.base_dir) for key, value in options.items()}

    for key in ("backbone", "blend", "modulator"):
        data[key] = absolute(data[key])
    data["layout"] = [absolute(entry) for entry in data["layout"]]
    data["extensions"] = [absolute(entry) for entry in data["extensions"]]
    for control in data["control"]:
        control["annotator"] = absolute(control["annotator"])
        control["model"] = _absolute_option(control["model"], spec.base_dir)
    return data


def _absolute_option(value: Any, base_dir: Path) -> Any:
    if not isinstance(value, str) or not value or os.path.isabs(os.path.expanduser(value)):
        return value
    candidate = base_dir / value
    return str(candidate.resolve()) if candidate.exists() else value
