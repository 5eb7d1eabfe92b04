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

    :ivar dense_flops: FLOP/s of convolutions and linear layers.
    :ivar attention_flops: FLOP/s of attention products (SDPA).
    :ivar modulation_cost: time of a modulated self-attention call ÷ a plain one.
    :ivar call_seconds: fixed seconds per UNet or ControlNet forward (Python, kernel launches).
    :ivar load_bytes: bytes/s reading weights files (and converting their dtype).
    :ivar load_copy: share of a weights file held in memory while it is converted (CPU loading).
    :ivar transfer_bytes: bytes/s moving weights host ↔ device (``cpu_offload``).
    :ivar runtime_bytes: memory beyond tensors (CPU: the libraries and their pools, in RSS; CUDA:
        0 — ``max_memory_allocated`` does not count the context).
    :ivar activation_factor: measured ÷ formula for activations (allocator rounding, temporaries
        the walk does not name).
    :ivar measured: whether these were measured (``False``: assumed, see docs/memory.md).
    """

    dense_flops: float
    attention_flops: float
    modulation_cost: float
    call_seconds: float
    load_bytes: float
    load_copy: float
    transfer_bytes: float
    runtime_bytes: float
    activation_factor: float
    measured: bool


#: Measured on the development machine (2 shared cores, torch 2.14 CPU, float32); docs/memory.md.
CPU = DeviceRates(dense_flops=30e9, attention_flops=15e9, modulation_cost=1.8, call_seconds=0.05,
                  load_bytes=150e6, load_copy=0.7, transfer_bytes=0.0, runtime_bytes=1.0 * 2**30, activation_factor=1.0,
                  measured=True)

#: Assumed for an H100/H200-class GPU in float16 (no GPU was available to measure); docs/memory.md.
CUDA = DeviceRates(dense_flops=150e12, attention_flops=150e12, modulation_cost=1.2, call_seconds=0.02,
                   load_bytes=2e9, load_copy=0.0, transfer_bytes=10e9, runtime_bytes=0.0, activation_factor=1.0,
                   measured=False)

#: A job fits when its predicted peak is at most this share of the free GPU memory (the caching
#: allocator's fragmentation and the cuBLAS / cuDNN workspaces need the rest).
FIT_MARGIN = 0.9


def rates_for(device: str) -> DeviceRates:
    """The constants of ``device`` (``"cpu"``, ``"cuda"``)."""
    return CPU if device == "cpu" else CUDA
