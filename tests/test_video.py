"""Video I/O (tokentrim/video.py): mp4 round trip, progressive writer, PNG frames, atomic writes, errors."""

import numpy as np
import pytest

from tokentrim.errors import UserError
from tokentrim.video import VideoWriter, atomic_path, read_video, write_png_frames, write_video


def frames(t=9, h=64, w=96, seed=0):
    """Smooth frames (a moving gradient) so H.264 keeps them close to the input."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.stack([np.stack([(x * 2 + 5 * i) % 256, (y * 3) % 256, np.full_like(x, 40 * (i % 6))], -1)
                    for i in range(t)])  # fmt: skip
    return out.astype(np.uint8)


def test_mp4_round_trip(tmp_path):
    video = frames()
    path = write_video(tmp_path / "out.mp4", video, fps=16)
    assert path == tmp_path / "out.mp4"
    back, fps = read_video(path)
    assert back.shape == video.shape and back.dtype == np.uint8
    assert fps == pytest.approx(16)
    assert np.abs(back.astype(int) - video.astype(int)).mean() < 8  # lossy, but the same pictures
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temporary file left


def test_progressive_writer_and_fps(tmp_path):
    video = frames(t=13)
    with VideoWriter(tmp_path / "stream.mp4", fps=8) as writer:
        writer.append(video[:1])
        writer.append(video[1:9])
        writer.append(video[9:])
        assert not (tmp_path / "stream.mp4").exists()  # only the finished file gets the final name
    assert writer.frames_written == 13
    back, fps = read_video(tmp_path / "stream.mp4")
    assert back.shape[0] == 13 and fps == pytest.approx(8)


def test_failed_write_leaves_nothing(tmp_path):
    video = frames(t=3)
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "bad.mp4") as writer:
            writer.append(video)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(tmp_path / "empty.mp4"):
        pass  # nothing appended: no file
    assert list(tmp_path.iterdir()) == []


def test_existing_file_replaced_only_on_success(tmp_path):
    target = tmp_path / "keep.mp4"
    target.write_bytes(b"old")
    with pytest.raises(UserError):
        write_video(target, frames(t=2, h=63, w=96))  # odd height: rejected
    assert target.read_bytes() == b"old"
    write_video(target, frames(t=2))
    assert read_video(target)[0].shape[0] == 2


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), r"\[T, H, W, 3\]"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), r"\[T, H, W, 3\]"),
        (np.zeros((2, 9, 8, 3), dtype=np.uint8), "even"),
    ],
)
def test_bad_frames(tmp_path, bad, match):
    with pytest.raises(UserError, match=match):
        write_video(tmp_path / "x.mp4", bad)
    assert list(tmp_path.iterdir()) == []


def test_read_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video")
    with pytest.raises(UserError, match="cannot read"):
        read_video(tmp_path / "junk.mp4")


def test_png_frames(tmp_path):
    from PIL import Image

    video = frames(t=3, h=6, w=5)  # PNG is lossless and accepts odd sizes
    paths = write_png_frames(tmp_path / "png", video)
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    for path, frame in zip(paths, video, strict=True):
        assert np.array_equal(np.asarray(Image.open(path)), frame)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [p.name for p in paths]


def test_atomic_path_cleans_up(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "a.bin") as tmp:
        assert tmp.parent == tmp_path and tmp.name != "a.bin"
        tmp.write_bytes(b"done")
    assert (tmp_path / "a.bin").read_bytes() == b"done" and len(list(tmp_path.iterdir())) == 1
