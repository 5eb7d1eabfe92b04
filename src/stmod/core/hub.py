"""The Hugging Face hub as seen from here, asked cheaply: is a repo cached, does the hub answer at all.

Backbones and evaluators ask before a download would spend minutes retrying, so that an unreachable
hub is one clear line within seconds.
"""

from __future__ import annotations

import os

__all__ = ["in_hf_cache", "hub_unreachable"]


def _cache_dir() -> str | None:
    """The hub cache the environment names now (huggingface_hub reads it once, at its import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


#: A file every cached model repo has: a diffusers pipeline's index, or a single model's config.
_MARKER_FILES = ("model_index.json", "config.json")


def in_hf_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id`` (one lookup per marker file, no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo_id, name, cache_dir=_cache_dir()), str)
                   for name in _MARKER_FILES)
    except ValueError:  # not a valid repo id (then it is not cached either)
        return False


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub (``HF_ENDPOINT``) cannot be reached, or ``None`` when a connection opens within ``timeout``.

    One TCP connection instead of the download's retries (minutes) before an unclear error. Name
    resolution runs in a thread so that a hanging DNS is bounded by ``timeout`` too.
    """
    import concurrent.futures
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(lambda: socket.create_connection((host, port), timeout=timeout).close()).result(timeout=timeout + 0.5)
    except concurrent.futures.TimeoutError:
        return f"{host}:{port} did not answer within {timeout:.0f} s"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    finally:
        pool.shutdown(wait=False)
    return None
