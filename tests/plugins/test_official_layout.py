"""Official VideoGrain configs run from the official repository's own layout (issue 24).

The folder looks like a checkout of the official code: ``config/…yaml``, ``data/<clip>/`` frames and
``layout_masks/<name>/%05d.png``, ``ckpt/`` holding SD 1.5 and the ControlNets (tiny models saved with
``save_pretrained``), and the annotator weights in ``annotator/ckpts/`` where the official README puts
them. Overlapping masks are compared with a float64 transcription of the official formulas
(``reference/videograin-official.md`` §1.5–1.6, §3.3), written here from that text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from stmod.plugins.manager import load_job
from stmod.core.errors import LayoutError
from stmod.core.pipeline.editor import Editor
from stmod.core.st_layout.labels import level_layout, rules_for
from stmod.testing import fresh_plugin_manager, run_cli

#: control_type → the ControlNet folder the official download script puts in ckpt/
CONTROLNETS = {"depth": "control_v11f1p_sd15_depth", "depth_zoe": "control_v11f1p_sd15_depth",
               "openpose": "control_v11p_sd15_openpose", "dwpose": "control_v11p_sd15_openpose"}
DEPTH_FILE = "dpt_hybrid-midas-501f0c75.pt"


def rectangles(size: int) -> dict[str, tuple[int, int, int, int]]:
    """``(top, bottom, left, right)`` per mask: 'eyes' lies inside 'left_man' (a later mask covering an
    earlier one entirely) and 'left_man' overlaps 'right_man'; the rest of the frame is in no mask."""
    s = size // 16
    return {"eyes": (3 * s, 5 * s, 3 * s, 6 * s), "left_man": (2 * s, 14 * s, 1 * s, 9 * s),
            "right_man": (4 * s, 15 * s, 7 * s, 15 * s)}


def official_tree(root: Path, tiny_folder: Path, *, control_type: str = "depth", size: int = 128, frames: int = 2,
                  hand: bool = False, face: bool = False, weights: tuple[str, ...] | None = None,
                  models: bool = True) -> Path:
    """A checkout of the official layout under ``root``; returns the config's path."""
    (root / "ckpt").mkdir(parents=True)
    if models:
        (root / "ckpt" / "stable-diffusion-v1-5").symlink_to(tiny_folder)
        for name in set(CONTROLNETS.values()):
            (root / "ckpt" / name).symlink_to(tiny_folder / "controlnet")
    if weights:
        (root / "annotator" / "ckpts").mkdir(parents=True)
        for filename in weights:
            (root / "annotator" / "ckpts" / filename).write_bytes(b"stand-in weights")
    clip = root / "data" / "two_men"
    (clip / "frames").mkdir(parents=True)
    for i in range(frames):
        image = np.full((size, size, 3), 60 + 20 * i, np.uint8)
        image[size // 4:size // 2, size // 4:size // 2] = (200, 40, 40)
        cv2.imwrite(str(clip / "frames" / f"{i:05d}.png"), image)
    for name, (top, bottom, left, right) in rectangles(size).items():
        (clip / "layout_masks" / name).mkdir(parents=True)
        mask = np.zeros((size, size), np.uint8)
        mask[top:bottom, left:right] = 255
        for i in range(frames):
            cv2.imwrite(str(clip / "layout_masks" / name / f"{i:05d}.png"), mask)
    control: dict[str, Any] = {"control_type": control_type, "controlnet_conditioning_scale": 0.8,
                               "pretrained_controlnet_path": f"./ckpt/{CONTROLNETS[control_type]}"}
    if control_type in ("openpose", "dwpose"):
        control.update(hand=hand, face=face)
    config = {
        "pretrained_model_path": "./ckpt/stable-diffusion-v1-5",
        "logdir": "./result/two_men",
        "dataset_config": {"path": "data/two_men/frames", "prompt": "two men", "n_sample_frame": frames,
                           "sampling_rate": 1, "layout_mask_dir": "./data/two_men/layout_masks",
                           "layout_mask_order": list(rectangles(size)), "negative_promot": "ugly",
                           "image_size": size},
        "control_config": control,
        "editing_config": {"editing_prompts": [["red sunglasses on iron man and a polar bear", "red sunglasses",
                                                "iron man", "polar bear"]],
                           "num_inference_steps": 2, "guidance_scale": 7.5, "use_invertion_latents": True,
                           "use_pnp": False, "inject_step": 0, "old_qk": 1, "flatten_res": [],
                           "use_freeu": False, "blending_percentage": 0},
        "seed": 1,
    }
    path = root / "config" / "instance_level" / "two_men.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))
    return path


# ------------------------------------------------------------------ the official formulas, in float64

def official_layouts(root: Path, names: list[str], frames: int, latent: int) -> torch.Tensor:
    """``layouts (f, s, H_lat, W_lat)``: each PNG read grey, ``> 0``, resized INTER_NEAREST to the latent."""
    maps = [[cv2.resize((cv2.imread(str(root / "data/two_men/layout_masks" / n / f"{i:05d}.png"),
                                    cv2.IMREAD_GRAYSCALE) > 0).astype(np.float64), (latent, latent),
                        interpolation=cv2.INTER_NEAREST) for n in names] for i in range(frames)]
    return torch.tensor(np.array(maps), dtype=torch.float64)


def official_terms(layouts: torch.Tensor, grid: int, spans: list[tuple[int, int] | None]) -> dict[str, torch.Tensor]:
    """Self R (Σ_s m_s m_sᵀ > 0 over all frames), self size 1 − Σ_s m_s[x]·|m_s|_video / ((h·f)·(w·f)),
    cross R (token j of span i positive where mask i is; later spans overwrite), cross size
    1 − Σ_s m_s[x]·|m_s|_frame / N, and the blend union (OR of all masks) at the latent size."""
    f, s = layouts.shape[:2]
    m = F.interpolate(layouts, size=(grid, grid), mode="nearest").reshape(f, s, -1)
    n = m.shape[-1]
    flat = m.permute(1, 0, 2).reshape(s, f * n)
    pww = torch.zeros(f, 77, n, dtype=torch.float64)
    for i, span in enumerate(spans):
        if span is not None:
            pww[:, span[0]:span[1]] = m[:, i][:, None, :]
    return {"self_r": (flat.T @ flat) > 0,
            "self_size": 1 - (flat * flat.sum(1, keepdim=True)).sum(0) / ((grid * f) * (grid * f)),
            "cross_r": pww.permute(0, 2, 1) > 0,
            "cross_size": 1 - (m * m.sum(-1, keepdim=True)).sum(1) / n,
            "union": layouts.sum(1) > 0}


def test_overlapping_masks_keep_the_official_union_and_size_terms(tmp_path: Path, monkeypatch, tiny_folder) -> None:
    """A converted config leaves overlapping masks as the official code does (``layout_overlap: keep``):
    stmod's region codes, size terms and union equal the official formulas at every modulated level,
    where ``later-wins`` shrank 'left_man' and refused 'eyes'."""
    size, frames = 128, 2
    monkeypatch.chdir(tmp_path)
    spec = load_job(official_tree(tmp_path, tiny_folder, size=size, frames=frames), {"control": []})
    assert spec.layout_overlap == "keep"
    prepared = Editor(fresh_plugin_manager().registry, progress=False, cache=False).prepare(spec, check_output=False)
    names = list(prepared.layout.names)
    spans = [(s.start, s.stop) if s is not None else None for s in prepared.components.spans]
    layouts = official_layouts(tmp_path, names, frames, size // 8)
    for grid in (size // 16, size // 32, size // 64):  # the levels the videograin preset modulates
        ours = level_layout(prepared.layout.masks, (grid, grid), rules=rules_for("videograin"), spans=spans)
        theirs = official_terms(layouts, grid, spans)
        codes = ours.self_codes.reshape(-1)
        assert torch.equal(ours.self_relation[codes[:, None], codes[None, :]], theirs["self_r"])
        assert torch.allclose(ours.self_size.reshape(-1).double(), theirs["self_size"], rtol=0, atol=1e-6)
        cross = ours.cross_relation[ours.pixel_codes[:, :, None], ours.text_codes[None, None, :]]
        assert torch.equal(cross, theirs["cross_r"])
        assert torch.allclose(ours.cross_size.double(), theirs["cross_size"], rtol=0, atol=1e-6)
        assert (ours.masks.sum(1) > 1).any()  # the overlap survives at this level: the case is exercised
    union = F.interpolate(prepared.layout.masks.any(1, keepdim=True).float(), size=(size // 8,) * 2, mode="nearest")
    assert torch.equal(union[:, 0] > 0, official_terms(layouts, size // 8, spans)["union"])


def test_check_names_what_an_overlap_rule_does(tmp_path: Path, monkeypatch, tiny_folder) -> None:
    """``check`` says which regions share pixels under ``keep``, and which shrink under ``later-wins``
    (with the pixel counts); a region a later one covers entirely is refused with its size."""
    size = 128
    monkeypatch.chdir(tmp_path)
    path = official_tree(tmp_path, tiny_folder, size=size)
    result = run_cli(["check", str(path), "--no-control"], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 0, result.stderr
    box = rectangles(size)
    area = {n: (b - t) * (r - l) * 2 for n, (t, b, l, r) in box.items()}  # two frames
    shared = (14 - 4) * (9 - 7) * (size // 16) ** 2 * 2
    assert f"regions 'left_man' and 'right_man' share {shared} pixels; both keep them" in result.stdout
    assert f"regions 'eyes' and 'left_man' share {area['eyes']} pixels" in result.stdout
    # the same masks as an stmod job under later-wins, without 'eyes'
    spec = load_job(path, {"control": [], "layout_overlap": "later-wins"})
    spec = attrs.evolve(spec, regions=tuple(r for r in spec.regions if r.name != "eyes"))
    from stmod.plugins.commands.check import overlap_lines

    prepared = Editor(fresh_plugin_manager().registry, progress=False, cache=False).prepare(spec, check_output=False)
    assert overlap_lines(spec, prepared) == [
        f"overlap: region 'left_man' shrinks from {area['left_man']} to {area['left_man'] - shared} pixels "
        "(later-wins: later region(s) 'right_man' take the shared pixels)"]
    with pytest.raises(LayoutError, match=rf"'eyes' \({area['eyes']} pixels\) is covered entirely by later "
                                          r"region\(s\) left_man"):
        Editor(fresh_plugin_manager().registry, progress=False, cache=False).prepare(
            attrs.evolve(spec, regions=load_job(path).regions), check_output=False)


# ------------------------------------------------------------------ annotator weights in the official place

class StandInDetector:
    """Records the weight files the annotator resolved; draws nothing (controlnet-aux's detectors need
    real weights)."""

    loaded: list[dict[str, str]] = []

    def __init__(self, paths: dict[str, str]) -> None:
        StandInDetector.loaded.append(dict(paths))

    @staticmethod
    def load(annotator, paths: dict[str, str]) -> StandInDetector:
        """Stands in for the annotators' ``_load`` (the detector from the resolved files)."""
        return StandInDetector(paths)

    def __call__(self, frame: np.ndarray, **kwargs: Any) -> np.ndarray:
        return np.zeros(frame.shape, np.uint8)


@pytest.fixture
def stand_in(monkeypatch) -> list[dict[str, str]]:
    from stmod.backbones.annotators import DepthAnnotator, OpenposeAnnotator

    StandInDetector.loaded = []
    monkeypatch.setattr(DepthAnnotator, "_load", StandInDetector.load)
    monkeypatch.setattr(OpenposeAnnotator, "_load", StandInDetector.load)
    monkeypatch.setenv("HF_HOME", "/nonexistent/hf-home")  # an empty HF cache: only the official place has them
    return StandInDetector.loaded


@pytest.mark.parametrize(("control_type", "files"), [("depth", (DEPTH_FILE,)), ("openpose", ("body_pose_model.pth",))])
def test_a_converted_config_finds_its_weights_in_the_official_place(tmp_path: Path, monkeypatch, tiny_folder, stand_in,
                                                                    control_type: str, files: tuple[str, ...]) -> None:
    """``check`` and ``edit`` of a config in the official layout, with no extra flag: SD 1.5 and the
    ControlNet from ``ckpt/``, the annotator weights from ``annotator/ckpts/`` (openpose without hands and
    faces needs the body model only)."""
    monkeypatch.chdir(tmp_path)
    path = official_tree(tmp_path, tiny_folder, control_type=control_type, size=64, weights=files)
    env = {"STMOD_LOAD_PLUGINS": ""}
    checked = run_cli(["check", str(path)], env=env)
    assert checked.exit_code == 0, checked.stderr
    edited = run_cli(["edit", str(path), "--quiet"], env=env)
    assert edited.exit_code == 0, edited.stderr
    assert stand_in == [{name: str(tmp_path / "annotator" / "ckpts" / name) for name in files}]
    assert (tmp_path / "result" / "two_men" / "result.mp4").is_file()
    assert (tmp_path / "result" / "two_men" / "control.mp4").is_file()


def test_every_missing_file_in_one_message(tmp_path: Path, monkeypatch, tiny_folder) -> None:
    """No SD 1.5, no ControlNet, no annotator weights: one ``check`` names all three, each with the place
    looked at and where the official README puts it; exit 2."""
    from stmod.plugins.official import OFFICIAL_PLACES

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = official_tree(tmp_path, tiny_folder, control_type="openpose", hand=True, models=False)
    result = run_cli(["check", str(path)], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "4 weights files or folders are missing" in line
    for name in ("body_pose_model.pth", "hand_pose_model.pth"):
        assert (f"{name}: openpose annotator weights not found (HF_HUB_OFFLINE=1: nothing is downloaded); looked for "
                f"it at: {tmp_path / 'annotator/ckpts' / name}, the HF cache of lllyasviel/Annotators; put it in "
                f"{tmp_path / 'annotator/ckpts'}") in line
    assert "facenet.pth" not in line  # face: false
    assert f"{tmp_path / 'ckpt/stable-diffusion-v1-5'}: SD 1.5 model not found" in line
    assert f"{tmp_path / 'ckpt/control_v11p_sd15_openpose'}: ControlNet not found" in line
    for kind, count in (("model", 1), ("controlnet", 1), ("annotator", 2)):
        assert line.count(OFFICIAL_PLACES[kind]) == count


def test_annotator_weights_from_the_command_line(tmp_path: Path, monkeypatch, tiny_folder, stand_in) -> None:
    """``--annotator-weights DIR`` is looked in after the official place and the HF cache."""
    monkeypatch.chdir(tmp_path)
    path = official_tree(tmp_path, tiny_folder, control_type="depth", size=64)
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    (elsewhere / DEPTH_FILE).write_bytes(b"")
    env = {"STMOD_LOAD_PLUGINS": ""}
    assert run_cli(["check", str(path)], env=env).exit_code == 2
    assert run_cli(["check", str(path), "--annotator-weights", str(elsewhere)], env=env).exit_code == 0
    spec = load_job(path)
    from stmod.plugins.commands.jobargs import _with_annotator_weights

    extended = _with_annotator_weights(spec, str(elsewhere), fresh_plugin_manager().registry)
    assert extended.control[0].annotator.options["weights"] == ["./annotator/ckpts", "lllyasviel/Annotators",
                                                                 str(elsewhere)]
    refused = run_cli(["check", str(path), "--no-control", "--annotator-weights", str(elsewhere)], env=env)
    assert refused.exit_code == 2 and "no control entry of this job has an annotator that takes weights" in \
        refused.stderr


def test_the_log_and_summary_say_what_ran(tmp_path: Path, monkeypatch, tiny_folder, stand_in) -> None:
    """A dwpose config says it runs as stmod's openpose with its ControlNet, except with ``--no-control``;
    with ``--no-cache`` the summary does not say the inversion was cached."""
    monkeypatch.chdir(tmp_path)
    path = official_tree(tmp_path, tiny_folder, control_type="dwpose", size=64, weights=("body_pose_model.pth",))
    env = {"STMOD_LOAD_PLUGINS": ""}
    checked = run_cli(["check", str(path)], env=env)
    assert checked.exit_code == 0 and "runs as stmod's 'openpose' annotator" in checked.stderr
    assert "with ControlNet ./ckpt/control_v11p_sd15_openpose" in checked.stderr
    edited = run_cli(["edit", str(path), "--quiet", "--no-control", "--no-cache"], env=env)
    assert edited.exit_code == 0, edited.stderr
    assert "runs as" not in edited.stderr and "ControlNet" not in edited.stderr + edited.stdout
    assert "inversion: computed (cache off)" in edited.stdout and "cached for the next" not in edited.stdout
    assert stand_in == []  # no control: no detector loaded
