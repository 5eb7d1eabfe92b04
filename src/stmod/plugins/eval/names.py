"""Names the ``eval`` flags need, kept apart from the metrics so that building the CLI imports no torch."""

from __future__ import annotations

from stmod.core.errors import UsageError

__all__ = ["METRICS", "DEFAULT_CLIP", "parse_metrics"]

#: Every metric ``stmod-run eval`` knows, in report order.
METRICS = ("clip-t", "clip-f", "warp", "q-edit", "regions", "background")

#: The CLIP checkpoint of LOVEU-TGVE's official evaluation (ViT-L/14).
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"warp,clip-f"`` → ``("clip-f", "warp")`` in report order; ``all`` is every metric.

    :raises UsageError: for an unknown name, listing the valid ones.
    """
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names or names == ["all"]:
        return METRICS
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UsageError(f"--metrics: unknown metric {unknown[0]!r}; use a comma list of {', '.join(METRICS)} or all")
    return tuple(m for m in METRICS if m in names)
