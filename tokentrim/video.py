"""Video files: H.264 mp4 through imageio-ffmpeg's bundled ffmpeg (no system ffmpeg), PNG frames, reading back.

Every writer goes through `tokentrim.files.atomic_path`: a temporary name in the destination folder, renamed when
complete, so an interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tokentrim.errors import UserError
from tokentrim.files import atomic_path

DEFAULT_FPS = 16  # Wan2.1 `sample_fps`


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"video frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return frames


class VideoWriter:
    """Progressive mp4 writer: `append(frames)` as blocks are decoded, `close()` renames the finished file.

    Usage::

        with VideoWriter("out.mp4", fps=16) as writer:
            for frames in decoder:   # uint8 [t, H, W, 3]
                writer.append(frames)
    """

    def __init__(self, path: str | os.PathLike, fps: int = DEFAULT_FPS, quality: int = 8):
        import imageio.v2 as imageio

        self.path = Path(path)
        self.fps = fps
        self.frames_written = 0
        self._ctx = atomic_path(self.path, suffix=".mp4")
        self._tmp = self._ctx.__enter__()
        # macro_block_size=1 keeps odd sizes (tiny presets) instead of resizing them.
        self._writer = imageio.get_writer(
            self._tmp, format="FFMPEG", fps=fps, codec="libx264", quality=quality,
            pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        )  # fmt: skip

    def append(self, frames: np.ndarray) -> None:
        frames = _check_frames(frames)
        if frames.shape[1] % 2 or frames.shape[2] % 2:
            raise UserError(f"H.264 yuv420p needs even frame sizes, got {frames.shape[2]}x{frames.shape[1]}")
        for frame in frames:
            self._writer.append_data(frame)
            self.frames_written += 1

    def close(self, ok: bool = True) -> None:
        try:
            self._writer.close()
        except BaseException:  # ffmpeg already gone (an interrupt reaches it too): the file is dropped anyway
            if ok:
                raise
        if ok and self.frames_written == 0:
            ok = False
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = DEFAULT_FPS) -> Path:
    """Write uint8 frames `[T, H, W, 3]` to an H.264 mp4 (yuv420p) at `fps`, atomically."""
    with VideoWriter(path, fps=fps) as writer:
        writer.append(frames)
    return Path(path)


def write_png_frames(folder: str | os.PathLike, frames: np.ndarray, start: int = 0) -> list[Path]:
    """Write each frame as `folder/00000.png`, ... numbered from `start`. Callers that need the folder to appear
    only when complete write into `tokentrim.files.atomic_dir`."""
    from PIL import Image

    frames = _check_frames(frames)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames, start=start):
        target = folder / f"{i:05d}.png"
        Image.fromarray(frame).save(target, format="PNG")
        paths.append(target)
    return paths


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a video file into uint8 frames `[T, H, W, 3]` and its frame rate."""
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise UserError(f"video file not found: {path}")
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        fps = float(reader.get_meta_data().get("fps", DEFAULT_FPS))
        frames = np.stack([np.asarray(f, dtype=np.uint8)[..., :3] for f in reader])
        reader.close()
    except Exception as err:  # imageio raises several types for unreadable files
        detail = " ".join(str(err).split())[:120]
        raise UserError(f"cannot read video {path} ({detail}); give a complete video file (mp4)") from err
    if frames.size == 0:
        raise UserError(f"video {path} has no frames; give a complete video file (mp4)")
    return frames, fps
