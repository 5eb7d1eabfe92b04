"""Third-party components run behind a guard, so that their failures are reported as theirs.

A component a third-party plugin registered is wrapped (:func:`guard_component`): any exception from
one of its public methods, ``BaseException`` subclasses such as ``SystemExit`` included, becomes a
:class:`~stmod.core.errors.PluginComponentError` naming the component, its plugin and the method (one
line, exit 2), and a floating tensor it returns with NaN or inf values is refused the same way. A
``KeyboardInterrupt`` passes unchanged (it is the user's Ctrl-C, an interruption), and so do
:class:`~stmod.core.errors.StmodError` (the plugin's own clear refusal) and an environment error (a full
disk is the user's to fix). Built-in components are not wrapped: their failures are stmod's bugs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from stmod.core.errors import EditCancelled, PluginComponentError, StmodError, environment_problem

__all__ = ["guard_component", "guarded_call", "unwrap"]

#: Passed through unchanged: a refusal the plugin words itself, the user's Ctrl-C, a stop a callback asked for.
_PASS = (StmodError, KeyboardInterrupt, EditCancelled)


def _non_finite(value: object) -> bool:
    """Whether ``value`` is a floating torch tensor holding NaN or inf (torch imported only if in use)."""
    if type(value).__module__.split(".")[0] != "torch":
        return False
    import torch

    return isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())


def guarded_call(function: Callable[..., Any], *, where: str, plugin: str, method: str,
                 passed: tuple[type[BaseException], ...] = ()) -> Callable[..., Any]:
    """``function`` with its failures (and non-finite tensor results) reported as the plugin's;
    ``passed``: further exception types the caller handles itself."""

    let_through: tuple[type[BaseException], ...] = (*_PASS, *passed)

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
        except let_through:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit and the like from plugin code included
            if environment_problem(exc) is not None:
                raise
            error = _failure_type(type(exc))(where, plugin, method, f"{type(exc).__name__}: {exc}")  # type: ignore[arg-type]  # classes hash by identity
            raise error from exc
        if _non_finite(result):
            raise PluginComponentError(where, plugin, method, "returned non-finite values (NaN or inf)")
        return result

    return call


@functools.lru_cache(maxsize=None)
def _failure_type(raised: type[BaseException]) -> type[PluginComponentError]:
    """:class:`PluginComponentError` that is also a ``raised`` where the two can be combined, so a
    Python caller's ``except RuntimeError`` around a plugin's component still catches its failure; the
    CLI reports it as a ``StmodError`` (one line, exit 2). ``SystemExit``, ``OSError`` and the like do
    not combine (their C layouts differ) and are not wanted as such: plain ``PluginComponentError``."""
    if not issubclass(raised, Exception) or issubclass(raised, PluginComponentError):
        return PluginComponentError
    try:
        return type(f"PluginComponentError_{raised.__name__}", (PluginComponentError, raised), {})
    except TypeError:
        return PluginComponentError


class _Guarded:
    """Base of the wrappers :func:`guard_component` makes; ``_stmod_inner`` is the plugin's object."""

    __slots__ = ("_stmod_inner",)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_stmod_inner"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_stmod_inner"), name, value)


def _forward_property(name: str) -> property:
    return property(lambda self: getattr(self._stmod_inner, name))


def guard_component(component: Any, *, where: str, plugin: str) -> Any:
    """A wrapper of ``component`` whose public methods are :func:`guarded_call`-ed. It is made as a class
    with those methods and properties spelled out, so runtime-checkable protocols (which may look
    attributes up statically) see the same members as on ``component``."""
    # __class__ answers isinstance(wrapper, PluginClass) as for the plugin's object (as wrapt's proxies do)
    members: dict[str, Any] = {"__slots__": (), "__doc__": type(component).__doc__,
                               "__class__": property(lambda self: type(self._stmod_inner))}
    for name in dir(component):
        if name.startswith("_"):
            continue
        value = getattr(component, name, None)
        if callable(value) and not isinstance(value, type):
            members[name] = _method(name, where, plugin)
        else:
            members[name] = _forward_property(name)
    cls = type(f"Guarded{type(component).__name__}", (_Guarded,), members)
    wrapper: Any = object.__new__(cls)
    object.__setattr__(wrapper, "_stmod_inner", component)
    return wrapper


def _method(name: str, where: str, plugin: str) -> Callable[..., Any]:
    def method(self: _Guarded, *args: Any, **kwargs: Any) -> Any:
        bound = getattr(self._stmod_inner, name)
        return guarded_call(bound, where=where, plugin=plugin, method=name)(*args, **kwargs)

    method.__name__ = name
    return method


def unwrap(component: Any) -> Any:
    """The plugin's own object behind a guard (``component`` itself when not guarded)."""
    return component._stmod_inner if isinstance(component, _Guarded) else component
