"""The Hugging Face hub as seen from here, asked cheaply: is a repo cached, does the hub answer at all.

Backbones and evaluators ask before a download would spend minutes retrying, so that an unreachable
hub is one clear line within seconds.
"""

from __future__ import annotations

import os

__all__ = ["in_hf_cache", "hub_unreachable"]


def in_hf_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds ``repo_id`` (a scan of the cache folder; no network)."""
    from huggingface_hub import scan_cache_dir

    try:
        return repo_id in {repo.repo_id for repo in scan_cache_dir().repos}
    except Exception:  # no cache folder yet
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
