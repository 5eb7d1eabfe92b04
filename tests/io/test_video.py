"""Video I/O: round trips, probing, frame selection, the frame/mask transform, atomic writes, errors."""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from stmod.core.errors import InputError
from stmod.core.types import VideoSource
from stmod.plugins.commands.demo import synthetic_clip
from stmod.core.io.video import (
    FrameTransform,
    load_video,
    probe_video,
    read_video,
    select_frames,
    write_frames,
    write_gif,
    write_mp4,
    write_video,
)


def _clip(frames: int = 6, height: int = 64, width: int = 96) -> np.ndarray:
    """Smooth moving gradients, uint8 (F, H, W, 3): compresses well, so lossy round trips stay close."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = [np.stack([128 + 100 * np.sin((xx + 4 * i) / 15), 128 + 100 * np.cos(yy / 11), np.full_like(xx, 90 + 10 * i)],
                    axis=-1) for i in range(frames)]
    return np.stack(out).round().astype(np.uint8)


def _error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_mp4_round_trip(tmp_path: Path) -> None:
    """H.264 mp4 reads back close to what was written, with its frame count, size and fps."""
    frames = _clip()
    write_mp4(tmp_path / "a.mp4", frames, fps=12)
    info = probe_video(tmp_path / "a.mp4")
    assert (info.frames, info.height, info.width, info.fps, info.kind) == (6, 64, 96, 12.0, "video")
    back, fps = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape and back.dtype == np.uint8 and fps == 12.0
    assert _error(back, frames) < 3.0
    with av.open(str(tmp_path / "a.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"


def _fill_freed_heap(value: int) -> None:
    """Leave ``value`` bytes in glibc's free heap memory: what the next malloc returns uninitialised."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    sizes = [2**k for k in range(4, 17) for _ in range(32)]
    blocks = [libc.malloc(size) for size in sizes]
    for block, size in zip(blocks, sizes):
        ctypes.memset(block, value, size)
    for block in blocks:
        libc.free(block)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="fills the heap through glibc's malloc")
def test_mp4_is_byte_reproducible(tmp_path: Path) -> None:
    """The same frames give the same file whatever the freed heap memory held. (x264's AVX-512
    macroblock-tree code reads uninitialised memory when B-frames are used, seen for 64- and 96-pixel
    wide clips; write_mp4 turns B-frames off.)"""
    frames, _ = synthetic_clip(8, (64, 64), 0)  # moving shapes: x264 chooses B-frames for them
    written = set()
    for value in range(0, 256, 32):
        _fill_freed_heap(value)
        written.add(write_mp4(tmp_path / f"{value}.mp4", frames, fps=8).read_bytes())
    assert len(written) == 1


def test_gif_round_trip(tmp_path: Path) -> None:
    """GIF reads back close to what was written; 10 fps survives GIF's 1/100 s delays."""
    frames = _clip()
    write_video(tmp_path / "a.gif", frames, fps=10)
    back, fps = read_video(tmp_path / "a.gif")
    assert back.shape == frames.shape and fps == 10.0 and _error(back, frames) < 8.0


def test_frames_folder_round_trip_natural_order(tmp_path: Path) -> None:
    """A PNG folder is lossless, and frames are taken in natural order (f2 before f10)."""
    frames = _clip(frames=11)
    write_frames(tmp_path / "out", frames, pattern="f{}.png")
    back, fps = read_video(tmp_path / "out")
    assert np.array_equal(back, frames) and fps == 8.0


def test_webm_probe_counts_frames(tmp_path: Path) -> None:
    """A webm without a frame count in its header is counted from its packets."""
    frames = _clip(frames=5)
    with av.open(str(tmp_path / "a.webm"), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    info = probe_video(tmp_path / "a.webm")
    assert (info.frames, info.height, info.width) == (5, 64, 96)
    assert read_video(tmp_path / "a.webm", [4])[0].shape == (1, 64, 96, 3)


def test_selected_indices_match_full_read(tmp_path: Path) -> None:
    """Reading chosen frames gives the same pixels as reading all and indexing."""
    write_mp4(tmp_path / "a.mp4", _clip(), fps=8)
    everything, _ = read_video(tmp_path / "a.mp4")
    some, _ = read_video(tmp_path / "a.mp4", [1, 4])
    assert np.array_equal(some, everything[[1, 4]])


def test_rotated_video_is_upright(tmp_path: Path) -> None:
    """A display rotation in the file is applied, so probe and read agree on the upright size."""
    frames = _clip(frames=2)
    with av.open(str(tmp_path / "r.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(90)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    info = probe_video(tmp_path / "r.mp4")
    back, _ = read_video(tmp_path / "r.mp4")
    assert (info.height, info.width) == (96, 64) and back.shape == (2, 96, 64, 3)
    assert _error(back[0], np.rot90(frames[0])) < 3.0


def test_odd_size_mp4_is_padded_even(tmp_path: Path) -> None:
    """yuv420p needs even sizes: an odd-sized clip is padded by one pixel."""
    write_mp4(tmp_path / "odd.mp4", _clip()[:, :63, :95], fps=8)
    assert probe_video(tmp_path / "odd.mp4").size == (64, 96)


def test_missing_unreadable_and_empty_inputs(tmp_path: Path) -> None:
    """Missing, unreadable and empty inputs raise InputError naming video.path."""
    with pytest.raises(InputError, match=r"^video.path='.*nope.mp4': no such file or folder$"):
        probe_video(tmp_path / "nope.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match=r"video.path=.*bad.mp4.*cannot be read as a video"):
        read_video(tmp_path / "bad.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"video.path=.*empty.*holds no frames"):
        probe_video(tmp_path / "empty")
    (tmp_path / "bad.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputError, match=r"cannot be read as a GIF"):
        probe_video(tmp_path / "bad.gif")


def test_frames_of_different_sizes(tmp_path: Path) -> None:
    """A frames folder with one odd-sized frame names that frame and both sizes."""
    write_frames(tmp_path / "f", _clip(frames=3))
    write_frames(tmp_path / "g", _clip(frames=1, height=32))
    (tmp_path / "g" / "00000.png").rename(tmp_path / "f" / "00003.png")
    with pytest.raises(InputError, match=r"video.path=.*frame 3 is 96x32 but frame 0 is 96x64"):
        read_video(tmp_path / "f")


def test_selection_errors_say_how_many_frames_exist(tmp_path: Path) -> None:
    """A selection that picks nothing, or fewer frames than asked, says how many the clip has."""
    clip = tmp_path / "clip.mp4"
    with pytest.raises(InputError, match=r"video.path=.*start=8, every=1 selects no frames: the clip has 6 frames"):
        select_frames(VideoSource(path=clip, start=8), 6)
    with pytest.raises(InputError, match=r"frames=4 asked for with start=1, every=2, but the clip has 6 frames, "
                                         r"so only 3 can be selected"):
        select_frames(VideoSource(path=clip, start=1, every=2, frames=4), 6)
    assert select_frames(VideoSource(path=clip, start=1, every=2, frames=2), 6) == (1, 3)


def test_transform_keeps_square_under_mask(tmp_path: Path) -> None:
    """Scale-to-cover + centre crop of a non-square clip keeps a coloured square under its mask."""
    height, width = 100, 150  # 3:2 source → 128x64 edit: scale 0.853, crop rows
    frames = np.full((4, height, width, 3), 60, np.uint8)
    masks = np.zeros((4, height, width), bool)
    for i in range(4):
        masks[i, 30 + 5 * i:60 + 5 * i, 20 + 25 * i:50 + 25 * i] = True
        frames[i][masks[i]] = (0, 220, 0)
    write_frames(tmp_path / "clip", frames)
    clip = load_video(VideoSource(path=tmp_path / "clip", size=(128, 64), start=1, every=1, frames=3))
    assert clip.frames.shape == (3, 64, 128, 3) and clip.indices == (1, 2, 3) and clip.source_size == (100, 150)
    edit_masks = clip.transform(masks[list(clip.indices)])
    assert edit_masks.shape == (3, 64, 128) and edit_masks.dtype == bool
    green = (clip.frames[..., 1] > 110) & (clip.frames[..., 0] < 110)
    inter, union = (green & edit_masks).sum(), (green | edit_masks).sum()
    assert inter / union > 0.95
    as_tensor = clip.transform(torch.from_numpy(masks[1:4]))
    assert isinstance(as_tensor, torch.Tensor) and torch.equal(as_tensor, torch.from_numpy(edit_masks))


def test_transform_geometry() -> None:
    """Cover then centre-crop: identity for equal sizes; otherwise the crop is centred."""
    same = FrameTransform(source_height=64, source_width=128, height=64, width=128)
    assert same.identity and same.resized == (64, 128) and same.offset == (0, 0)
    tall = FrameTransform(source_height=200, source_width=100, height=64, width=64)
    assert tall.resized == (128, 64) and tall.offset == (32, 0)
    up = FrameTransform(source_height=32, source_width=48, height=64, width=64)
    assert up.resized == (64, 96) and up.offset == (0, 16)
    assert up.frames(np.zeros((2, 32, 48, 3), np.uint8)).shape == (2, 64, 64, 3)


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """A write that fails half-way leaves neither a partial file nor a temporary, and keeps the old file."""
    target = tmp_path / "result.mp4"
    write_mp4(target, _clip(frames=2), fps=8)
    before = target.read_bytes()

    def failing():
        yield from _clip(frames=3)
        raise RuntimeError("disk full")

    for writer in (write_mp4, write_gif):
        with pytest.raises(RuntimeError, match="disk full"):
            writer(target, failing(), fps=8)
    with pytest.raises(ValueError, match="frame 1"):
        write_frames(tmp_path / "frames", [_clip(frames=1)[0], np.zeros((4, 4), np.uint8)])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.mp4"]


def test_write_frames_replaces_folder(tmp_path: Path) -> None:
    """Writing a frames folder over an existing one replaces its content entirely."""
    write_frames(tmp_path / "out", _clip(frames=4))
    write_frames(tmp_path / "out", _clip(frames=2))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".stmod-owned", "00000.png", "00001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_sound_track_is_said_to_be_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A clip with audio: probed as such; reading it logs (at INFO) that the edit will be silent, in the
    line check and edit print once in their summaries."""
    import av

    from stmod.core.io.video import load_video, probe_video, sound_track_note
    from stmod.core.types import VideoSource

    path = tmp_path / "with_sound.mp4"
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=8)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        sound = container.add_stream("aac", rate=8000)
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 8000
        for packet in [*sound.encode(samples), *sound.encode(None)]:
            container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    assert probe_video(path).audio
    with caplog.at_level("INFO", logger="stmod"):
        load_video(VideoSource(path=path, frames=2, size=(64, 64)))
    # Not a warning on every read: check's and edit's summaries say it once (sound_track_note).
    assert [(r.levelname, r.message) for r in caplog.records if "sound track" in r.message] == [
        ("INFO", f"{path} has a sound track; stmod edits the frames only, so the edited videos are silent")]
    assert sound_track_note(probe_video(path)) == f"{path} has a sound track; stmod edits the frames only, so the " \
                                                  "edited videos are silent"
    assert sound_track_note(probe_video(write_mp4(tmp_path / "silent.mp4", np.zeros((2, 64, 64, 3), np.uint8), 8))) is None
