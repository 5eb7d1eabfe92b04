"""The measured (or, for CUDA, assumed) constants of the estimate; how each was found is in ``docs/memory.md``.

The formulas give bytes and FLOPs exactly for the model shapes (FLOPs match
``torch.utils.flop_counter`` to 0.1 %); what they cannot know is how fast a device runs them and
what the runtime and allocator add. Those are :class:`DeviceRates`, one per device kind.
"""

from __future__ import annotations

from attrs import frozen

__all__ = ["DeviceRates", "CPU", "CUDA", "rates_for", "FIT_MARGIN"]


@frozen(kw_only=True)
class DeviceRates:
    """How one device kind runs the work.

    :ivar dense_flops: FLOP/s of the UNet's and ControlNet's convolutions and linear layers.
    :ivar vae_flops: FLOP/s of the VAE (large convolutions at full resolution run faster).
    :ivar attention_flops: FLOP/s of attention products (SDPA).
    :ivar modulation_cost: time of a modulated self-attention call ÷ a plain one.
    :ivar call_seconds: fixed seconds per UNet or ControlNet forward (Python, kernel launches).
    :ivar load_bytes: bytes/s reading weights files (and converting their dtype).
    :ivar load_copy: share of a weights file held in memory while it is converted (CPU loading).
    :ivar transfer_bytes: bytes/s moving weights host ↔ device (``cpu_offload``).
    :ivar runtime_bytes: memory beyond tensors (CPU: the libraries and their pools, in RSS; CUDA:
        0 — ``max_memory_allocated`` does not count the context).
    :ivar activation_factor: measured ÷ formula for the UNet's activations (allocator rounding,
        temporaries the walk does not name).
    :ivar vae_factor: the same for the VAE's.
    :ivar measured: whether these were measured (``False``: assumed, see docs/memory.md).
    """

    dense_flops: float
    vae_flops: float
    attention_flops: float
    modulation_cost: float
    call_seconds: float
    load_bytes: float
    load_copy: float
    transfer_bytes: float
    runtime_bytes: float
    activation_factor: float
    vae_factor: float
    measured: bool


#: Measured on the development machine (2 shared cores, torch 2.14 CPU, float32); docs/memory.md.
CPU = DeviceRates(dense_flops=17e9, vae_flops=43e9, attention_flops=17e9, modulation_cost=1.8, call_seconds=0.4,
                  load_bytes=300e6, load_copy=0.6, transfer_bytes=0.0, runtime_bytes=1.08 * 2**30,
                  activation_factor=1.0, vae_factor=1.32, measured=True)

#: Assumed for an H100/H200-class GPU in float16 (no GPU was available to measure); docs/memory.md.
CUDA = DeviceRates(dense_flops=150e12, vae_flops=150e12, attention_flops=150e12, modulation_cost=1.2,
                   call_seconds=0.02, load_bytes=2e9, load_copy=0.0, transfer_bytes=10e9, runtime_bytes=0.0,
                   activation_factor=1.0, vae_factor=1.0, measured=False)

#: A job fits when its predicted peak is at most this share of the free GPU memory (the caching
#: allocator's fragmentation and the cuBLAS / cuDNN workspaces need the rest).
FIT_MARGIN = 0.9


def rates_for(device: str) -> DeviceRates:
    """The constants of ``device`` (``"cpu"``, ``"cuda"``)."""
    return CPU if device == "cpu" else CUDA
