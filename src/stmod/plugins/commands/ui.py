"""``stmod-run ui``: serve the browser page (needs the extra ``stmod[ui]``; Gradio is imported only here)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stmod.core.errors import MissingDependencyError, UsageError

if TYPE_CHECKING:
    from stmod.cli import Session
    from stmod.core.pipeline.cache import InversionCache
    from stmod.core.registry import Registry

__all__ = ["configure", "run", "free_port", "gradio_installed", "launch"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0: any free port)")
    parser.add_argument("--out", type=Path, default=Path("stmod-ui"),
                        help="folder for the runs: <out>/run-NNN/job.yaml and its result/ (default: ./stmod-ui)")
    parser.add_argument("--backbone", choices=("shapes", "sd15", "tiny"), default="shapes",
                        help="the backbone the page offers first (default: shapes, which edits only its toy world; "
                             "sd15 for real clips)")
    parser.add_argument("--model", metavar="ID|DIR|FILE", default="",
                        help="sd15's weights the page offers first: a hub id, a diffusers folder or a .safetensors "
                             "file (default: stable-diffusion-v1-5/stable-diffusion-v1-5)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def gradio_installed() -> bool:
    return importlib.util.find_spec("gradio") is not None


def launch(registry: Registry, out: Path, *, host: str = "127.0.0.1", port: int = 0,
           cache: InversionCache | None | bool = None, backbone: str = "shapes", model: str = "") -> tuple[Any, str]:
    """Build the page over ``registry`` and serve it without blocking; returns ``(page, address)``.

    ``backbone`` and ``model``: what the page offers first."""
    if not gradio_installed():
        raise MissingDependencyError("stmod-run ui", ["gradio"], extra="ui")
    if model and backbone != "sd15":
        raise UsageError(f"--model {model} is for --backbone sd15 (the page starts on {backbone}, which has its own "
                         "weights); add --backbone sd15 or drop --model")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: our machines have no network
    from stmod.plugins.ui.app import UiApp
    from stmod.plugins.ui.page import build

    out = out.expanduser().absolute()
    app = UiApp(registry, out, cache=cache, backbone=backbone, model=model)
    page = build(app)
    port = port or free_port(host)
    page.queue(default_concurrency_limit=1)  # one edit at a time: they share one model and the CPU
    try:
        page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, inbrowser=False,
                    allowed_paths=[str(out), str(app.scratch)], show_error=False)
    except OSError:  # Gradio's "Cannot find empty port ..." (it also names settings the CLI does not use)
        raise UsageError(f"cannot serve on {host}:{port}: the port is taken or the address is not this machine's; "
                         "pass another --port (0: any free one) or --host") from None
    return page, f"http://{host}:{port}"


def run(args: argparse.Namespace, session: Session) -> int:
    # Gradio and torch take seconds to import: say so before the wait, not after it.
    session.echo("stmod-run ui: starting (loading Gradio and the pipeline; the address follows) ...")
    getattr(session.stdout, "flush", lambda: None)()
    page, address = launch(session.registry, args.out, host=args.host, port=args.port, backbone=args.backbone,
                           model=args.model)
    session.echo(f"stmod-run ui: open {address} (runs go to {args.out.absolute()}; Ctrl+C stops)")
    try:
        page.block_thread()
    finally:
        page.close()
    return 0
