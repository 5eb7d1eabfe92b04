"""The ``wan`` backbone: multi-grained editing on Wan 2.1, a video diffusion transformer (``docs/wan.md``).

Modules: :mod:`.backbone` (loading, encode/decode, text, the velocity call), :mod:`.attention` (ST-Layout
as ``WanAttention`` processors), :mod:`.layout` (masks through the VAE's time compression), :mod:`.text`
(umT5 text with a start position), :mod:`.tiny` (a tiny random Wan model for tests).
"""

from stmod.backbones.wan.backbone import DEFAULT_WAN_MODEL, WanBackbone, WanOptions

__all__ = ["DEFAULT_WAN_MODEL", "WanBackbone", "WanOptions"]
