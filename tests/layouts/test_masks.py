"""The ``masks`` layout provider: folders, DAVIS palettes, SAM-Track WebUI output, and its errors."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
from PIL import Image

from stmod.core.errors import InputError, LayoutError
from stmod.core.types import VideoSource
from stmod.core.io.video import write_frames
from stmod.layouts.masks import MaskFolderProvider, MasksOptions, frame_files
from stmod.core.io.video import plan_clip


def _provider(**options) -> MaskFolderProvider:
    return MaskFolderProvider(MasksOptions(**options))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_round_trip_iou_one(scene, tmp_path, make_spec, request_for, write_masks) -> None:
    """Masks written → read → the same masks (IoU 1.0), in the job's region order, not the folders'."""
    write_frames(tmp_path / "small", scene.frames[:, :64, :128])
    truth = {n: m[:, :64, :128] for n, m in scene.masks.items()}
    write_masks(tmp_path / "small_masks", truth)
    spec = attrs.evolve(make_spec(regions=("red", "blue")), video=VideoSource(path=tmp_path / "small", size=(128, 64)))
    provider = _provider(dir="small_masks")
    provider.check(spec, ["red", "blue"], plan_clip(spec.video))
    masks = provider.layout(request_for(spec), ["red", "blue"])
    assert masks.names == ("red", "blue")
    assert masks.masks.dtype == torch.bool and masks.masks.shape == (6, 2, 64, 128)
    for k, name in enumerate(masks.names):
        assert _iou(masks.masks[:, k].numpy(), truth[name]) == 1.0
        assert np.array_equal(masks.masks[:, k].numpy(), truth[name])


def test_follow_selection_and_crop(scene, make_spec, request_for) -> None:
    """Masks follow start/every and the scale-and-crop, and the red square stays under its mask."""
    spec = make_spec(start=1, every=2)
    request = request_for(spec)
    assert request.frame_indices == (1, 3, 5)
    masks = _provider(dir="masks").layout(request, ["red", "blue"])
    assert masks.masks.shape == (3, 2, 64, 128)
    expected = request.transform(scene.masks["red"][[1, 3, 5]])
    assert np.array_equal(masks.masks[:, 0].numpy(), expected)
    red = (request.frames[..., 0] > 180) & (request.frames[..., 2] < 80)
    assert _iou(red, masks.masks[:, 0].numpy()) > 0.9


def test_sorted_names_index_by_position(scene, tmp_path, make_spec, request_for, write_masks) -> None:
    """Non-numeric names are taken in natural order: the k-th file is source frame k."""
    write_masks(tmp_path / "named", scene.masks, names="mask_{}.png".format)  # mask_2 < mask_10 naturally
    files = frame_files(tmp_path / "named" / "red")
    assert [files[k].name for k in range(6)] == [f"mask_{k}.png" for k in range(6)]
    masks = _provider(dir="named").layout(request_for(make_spec(start=2)), ["red"])
    assert np.array_equal(masks.masks[:, 0].numpy(), request_for(make_spec(start=2)).transform(scene.masks["red"][2:]))


def test_index_offset_and_absolute_numbers(scene, tmp_path, make_spec, request_for, write_masks) -> None:
    """Numeric names are absolute frame numbers; index_offset shifts them."""
    write_masks(tmp_path / "shifted", scene.masks, names=lambda i: f"{i + 100:05d}.png")
    spec = make_spec(start=3)
    masks = _provider(dir="shifted", index_offset=-100).layout(request_for(spec), ["blue"])
    assert np.array_equal(masks.masks[:, 0].numpy(), request_for(spec).transform(scene.masks["blue"][3:]))


def _palette_png(path, index: np.ndarray) -> None:
    img = Image.fromarray(index.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12))
    img.save(path)


def test_davis_palette_ids_to_names(scene, tmp_path, make_spec, request_for) -> None:
    """DAVIS indexed PNGs: ids map to region names, several ids may form one region."""
    folder = tmp_path / "davis"
    folder.mkdir()
    for i in range(6):
        index = np.zeros((96, 160), np.uint8)
        index[scene.masks["red"][i]] = 1
        index[scene.masks["blue"][i]] = 2
        index[0:4, 0:4] = 3  # a small third instance, merged into "red" below
        _palette_png(folder / f"{i:05d}.png", index)
    spec = make_spec()
    provider = _provider(dir="davis", format="davis", ids={"1": "red", 2: "blue", 3: "red"})
    provider.check(spec, ["red", "blue"], plan_clip(spec.video))
    masks = provider.layout(request_for(spec), ["blue", "red"]).masks.numpy()
    truth_red = scene.masks["red"].copy()
    truth_red[:, 0:4, 0:4] = True
    transform = request_for(spec).transform
    assert np.array_equal(masks[:, 0], transform(scene.masks["blue"]))
    assert np.array_equal(masks[:, 1], transform(truth_red))


def test_webui_palette_folders(scene, tmp_path, make_spec, request_for) -> None:
    """SAM-Track WebUI folders (``<name>_masks``, palette PNGs): every non-black pixel is the region."""
    for name in ("red", "blue"):
        (tmp_path / "webui" / f"{name}_masks").mkdir(parents=True)
        for i in range(6):
            _palette_png(tmp_path / "webui" / f"{name}_masks" / f"{i:05d}.png", scene.masks[name][i] * 3)
    spec = make_spec()
    masks = _provider(dir="webui", format="webui").layout(request_for(spec), ["red", "blue"]).masks.numpy()
    assert np.array_equal(masks[:, 1], request_for(spec).transform(scene.masks["blue"]))


def test_folders_option_renames(scene, make_spec, request_for) -> None:
    """The folders option maps a region to a differently named folder; regions match by name."""
    (scene.mask_dir / "red").rename(scene.mask_dir / "obj1")
    spec = make_spec()
    masks = _provider(dir="masks", folders={"red": "obj1"}).layout(request_for(spec), ["red"])
    assert masks.names == ("red",) and masks.masks.any()


def test_region_without_folder_lists_folders(scene, make_spec) -> None:
    """A region with no folder names the region and lists the folders that exist."""
    spec = make_spec(regions=("red", "green"))
    with pytest.raises(LayoutError, match=r"region 'green' has no mask folder .*green; folders in .*: blue, red"):
        _provider(dir="masks").check(spec, ["red", "green"], plan_clip(spec.video))


def test_missing_frame(scene, make_spec) -> None:
    """A selected frame without a mask file names the region, the frame and what exists."""
    (scene.mask_dir / "blue" / "00004.png").unlink()
    pattern = r"region 'blue': no mask for source frame 4 .*expected 00004.png; it has 5 masks"
    with pytest.raises(LayoutError, match=pattern) as info:
        _provider(dir="masks").check(spec := make_spec(), ["red", "blue"], plan_clip(spec.video))
    assert info.value.region == "blue"


def test_empty_region(scene, make_spec, request_for, write_masks) -> None:
    """An all-zero region over the selected frames is an error, in check and in layout."""
    write_masks(scene.mask_dir, {"blue": np.zeros_like(scene.masks["blue"])})
    spec = make_spec()
    with pytest.raises(LayoutError, match=r"region 'blue': .* empty in every selected frame"):
        _provider(dir="masks").check(spec, ["blue"], plan_clip(spec.video))
    with pytest.raises(LayoutError, match=r"empty in every selected frame"):
        _provider(dir="masks").layout(request_for(spec), ["blue"])


def test_region_outside_crop(scene, make_spec, write_masks) -> None:
    """A region only in the cropped-away border is reported as outside the crop."""
    border = np.zeros_like(scene.masks["blue"])
    border[:, :3, :] = True  # top rows: the 96 → 77 scaled picture loses its top 6 rows to the crop
    write_masks(scene.mask_dir, {"blue": border})
    with pytest.raises(LayoutError, match=r"outside the centre crop to 128x64"):
        _provider(dir="masks").check(spec := make_spec(), ["blue"], plan_clip(spec.video))


def test_size_mismatch(scene, make_spec) -> None:
    """A mask whose size differs from the source frames names the file and both sizes."""
    Image.new("L", (80, 48), 255).save(scene.mask_dir / "red" / "00002.png")
    with pytest.raises(LayoutError, match=r"00002.png is 80x48 but the source frames are 160x96"):
        _provider(dir="masks").check(spec := make_spec(), ["red"], plan_clip(spec.video))


def test_unreadable_png(scene, make_spec) -> None:
    """A file that is not a PNG is named."""
    (scene.mask_dir / "red" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(LayoutError, match=r"00001.png cannot be read as a PNG"):
        _provider(dir="masks").check(spec := make_spec(), ["red"], plan_clip(spec.video))


def test_davis_rejects_rgb_and_missing_id(scene, tmp_path, make_spec) -> None:
    """DAVIS format: an RGB PNG and a region without an id are errors."""
    folder = tmp_path / "davis"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (160, 96)).save(folder / f"{i:05d}.png")
    with pytest.raises(LayoutError, match=r"is a RGB image; DAVIS masks must be indexed"):
        _provider(dir="davis", format="davis", ids={1: "red"}).check(spec := make_spec(), ["red"], plan_clip(spec.video))
    with pytest.raises(LayoutError, match=r"region 'blue' has no instance id"):
        _provider(dir="davis", format="davis", ids={1: "red"}).check(spec := make_spec(), ["blue"], plan_clip(spec.video))


def test_option_names_unknown_region_and_missing_dir(scene, make_spec) -> None:
    """Options naming a region the job lacks, and a missing dir, are errors."""
    with pytest.raises(LayoutError, match=r"region 'rde', which is not a region of the job"):
        _provider(dir="masks", folders={"rde": "red"}).check(spec := make_spec(), ["red"], plan_clip(spec.video))
    with pytest.raises(LayoutError, match=r"mask folder .*nowhere does not exist"):
        _provider(dir="nowhere").check(spec := make_spec(), ["red"], plan_clip(spec.video))


def test_bad_selection_is_input_error(scene, make_spec) -> None:
    """A selection past the clip is an InputError on video.path, found by the one probe that providers share."""
    with pytest.raises(InputError, match=r"video.path=.*clip has 6 frames"):
        plan_clip(make_spec(start=10).video)
