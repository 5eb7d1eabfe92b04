"""GPU-only checks (marked `gpu`; skipped without CUDA): fp16 engine accuracy and a tiny edit on CUDA."""

from __future__ import annotations

import pytest
import torch

from stmod.core.st_layout.kernels import modulated_attention, modulated_attention_explicit

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _inputs(dtype: torch.dtype, device: str):
    g = torch.Generator().manual_seed(0)
    b, h, lq, lk, d = 1, 8, 512, 512, 80
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk))
    codes_q = torch.randint(0, 3, (1, lq), generator=g)
    codes_k = torch.randint(0, 3, (1, lk), generator=g)
    relation = torch.eye(3, dtype=torch.bool)
    strength = torch.rand(1, lq, generator=g) * 0.3
    to = dict(device=device, dtype=dtype)
    return (q.to(**to), k.to(**to), v.to(**to)), dict(strength=strength, query_codes=codes_q, key_codes=codes_k,
                                                     relation=relation)


@pytest.mark.parametrize("use_triton", [False, True], ids=["two-pass", "triton"])
def test_fp16_kernels_match_fp32_explicit(use_triton: bool) -> None:
    """The fp16 CUDA two-pass and Triton kernels agree with the fp32 literal formula on the CPU."""
    if use_triton:
        pytest.importorskip("triton")
    (q, k, v), kw = _inputs(torch.float16, "cuda")
    with torch.no_grad():
        ours = modulated_attention(q, k, v, use_triton=use_triton, **kw).float().cpu()
    (q32, k32, v32), _ = _inputs(torch.float32, "cpu")
    reference = modulated_attention_explicit(q32, k32, v32, **kw)
    assert (ours - reference).abs().max() < 2e-2


def test_tiny_edit_on_cuda(tmp_path) -> None:
    """The whole pipeline runs on CUDA in fp16 with the tiny model."""
    from stmod.core.config import load_job
    from stmod.plugins.commands.demo import write_demo_inputs
    from stmod.core.pipeline.editor import Editor
    from stmod.testing import fresh_plugin_manager

    job = write_demo_inputs(tmp_path / "inputs", frames=4, size=(64, 64), steps=3)
    spec = load_job(job, {"backbone": {"device": "cuda"}, "output": str(tmp_path / "out")})
    result = Editor(fresh_plugin_manager().registry, progress=False).run(spec)
    assert result.run["device"].startswith("cuda") and result.frames.shape == (4, 64, 64, 3)
    assert result.run["peak_gpu_bytes"] > 0


def test_cpu_offload_on_cuda_matches_and_frees_the_gpu(tmp_path) -> None:
    """--cpu-offload (accelerate hooks): the same frames as without, and every model back on the CPU after."""
    import numpy as np

    from stmod.core.config import load_job
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.commands.demo import write_demo_inputs
    from stmod.testing import fresh_plugin_manager

    job = write_demo_inputs(tmp_path / "inputs", frames=4, size=(64, 64), steps=3)
    frames = {}
    for offload in (False, True):
        spec = load_job(job, {"backbone": {"device": "cuda", "cpu_offload": offload},
                              "output": str(tmp_path / f"out-{offload}")})
        editor = Editor(fresh_plugin_manager().registry, progress=False, cache=False)
        frames[offload] = editor.run(spec).frames
    backbone = next(iter(editor._backbones.values()))
    assert backbone.offload is not None and backbone.offload.device.type == "cuda"
    for module in (backbone.unet, backbone.vae, backbone.text_encoder, *backbone.controlnets.values()):
        assert next(module.parameters()).device.type == "cpu"
    assert np.abs(frames[True].astype(int) - frames[False].astype(int)).max() <= 2
