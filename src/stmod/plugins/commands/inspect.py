"""``stmod-run plugins`` and ``stmod-run list KIND``: what is installed and what it provides."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import stmod
from stmod.core.errors import UsageError
from stmod.core.registry import KINDS, normalise_kind

if TYPE_CHECKING:
    from stmod.cli import Session
    from stmod.plugins.manager import StmodPluginManager


def configure_plugins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def plugin_report(pm: StmodPluginManager) -> dict[str, Any]:
    """Plugins, versions, implemented hooks and components, plus plugins that failed to load."""
    by_plugin = pm.components_by_plugin()
    extras: dict[str, dict[str, list[str]]] = {}  # plugin -> {"command" | "job format": names}
    named = [("command", info.plugin, info.name) for info in pm.registry.commands.values()]
    named += [("job format", info.plugin, info.name) for info in pm.registry.job_formats.values()]
    for label, plugin_name, component in named:
        extras.setdefault(plugin_name, {}).setdefault(label, []).append(component)
    plugins = []
    for name, record in pm.records.items():
        components: dict[str, list[str]] = {}
        for info in by_plugin.get(name, []):
            components.setdefault(info.kind, []).append(info.name)
        components.update(extras.get(name, {}))
        plugin = pm.get_plugin(name)
        plugins.append({
            "name": name,
            "distribution": "stmod" if record.builtin else record.distribution,
            "version": stmod.__version__ if record.builtin else record.version,
            "builtin": record.builtin,
            "module": record.module,
            "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
            "components": components,
        })
    failures = [{"name": f.name, "distribution": f.distribution, "reason": f.reason} for f in pm.failures]
    return {"plugins": plugins, "failed": failures}


def run_plugins(args: argparse.Namespace, session: Session) -> int:
    report = plugin_report(session.pm)
    if args.json:
        session.echo(json.dumps(report, indent=2))
        return 0
    for plugin in report["plugins"]:
        origin = "built-in" if plugin["builtin"] else plugin["module"]
        session.echo(f"{plugin['name']}  {plugin['distribution']} {plugin['version']}  ({origin})")
        for kind, names in plugin["components"].items():
            session.echo(f"    {kind}: {', '.join(names)}")
    for failure in report["failed"]:
        session.echo(f"BROKEN {failure['name']} ({failure['distribution']}): {failure['reason']}")
    return 0


def configure_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", metavar="KIND", help="one of: " + ", ".join(k + "s" for k in KINDS))


def run_list(args: argparse.Namespace, session: Session) -> int:
    try:
        kind = normalise_kind(args.kind)
    except KeyError:
        raise UsageError(f"unknown kind {args.kind!r}; use one of: {', '.join(k + 's' for k in KINDS)}") from None
    infos = sorted(session.registry.components(kind).values(), key=lambda i: i.name)
    width = max((len(i.name) for i in infos), default=0)
    pwidth = max((len(i.plugin) for i in infos), default=0)
    for info in infos:
        session.echo(f"{info.name:<{width}}  {info.plugin:<{pwidth}}  {info.summary}")
    return 0
