"""Video files: H.264 mp4 through imageio-ffmpeg's bundled ffmpeg (no system ffmpeg), PNG frames, reading back.

Every writer goes through `tokentrim.files.atomic_path`: a temporary name in the destination folder, renamed when
complete, so an interrupted run never leaves a half-written file under the final name. An mp4 is complete when
ffmpeg exits with status 0 after its trailer; its own reason for a failure ("No space left on device") becomes
the one-line error, never its banner or log.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np

from tokentrim.errors import UserError
from tokentrim.files import REFUSED, atomic_path

DEFAULT_FPS = 16  # Wan2.1 `sample_fps`


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"video frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    return frames


def ffmpeg_reason(log: str) -> str:
    """ffmpeg's reason for a failure, from its log: the last line's last clause, without the version banner,
    the build configuration, stream prefixes (`[in#0 @ 0x...]`) or file names."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not line[:1].isspace()]
    lines = [line for line in lines if not line.startswith(("ffmpeg version", "==="))]
    if not lines:
        return "no reason given"
    reason = re.sub(r"^(\[[^\]]*\]\s*)+", "", lines[-1]).rsplit(": ", 1)[-1].rstrip(".")
    return reason[:1].lower() + reason[1:200]


class VideoWriter:
    """Progressive mp4 writer: `append(frames)` as blocks are decoded, `close()` renames the finished file.

    Usage::

        with VideoWriter("out.mp4", fps=16) as writer:
            for frames in decoder:   # uint8 [t, H, W, 3]
                writer.append(frames)

    Frames go to an ffmpeg process (libx264, yuv420p, CRF from `quality` as imageio maps it) through a pipe.
    The file keeps its temporary name unless ffmpeg exits with status 0; a write the file system refuses (a
    full disk, ...) is `tokentrim.files.write_refused`'s one-line `UserError`, any other ffmpeg failure one
    line with ffmpeg's reason. Nothing appended: no file.
    """

    def __init__(self, path: str | os.PathLike, fps: int = DEFAULT_FPS, quality: int = 8):
        self.path = Path(path)
        self.fps = fps
        self.crf = int((1 - quality / 10) * 51)  # imageio-ffmpeg's mapping of quality 0..10 onto x264's CRF
        self.frames_written = 0
        self._size: tuple[int, int] | None = None
        self._proc: subprocess.Popen | None = None
        self._log = (
            bytearray()
        )  # the tail of ffmpeg's messages, read by a thread (a full pipe would stall it)
        self._reader: threading.Thread | None = None
        self._closed = False
        self._ctx = atomic_path(self.path, suffix=".mp4")
        self._tmp = self._ctx.__enter__()

    def _start(self, height: int, width: int) -> None:
        from imageio_ffmpeg import get_ffmpeg_exe

        cmd = [get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(self.fps), "-i", "-",
               "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(self.crf), "-f", "mp4",
               str(self._tmp)]  # fmt: skip
        # its own session: a Ctrl-C in the terminal reaches this process only, which then stops ffmpeg
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        self._size = (height, width)

        def read(stream=self._proc.stderr, log=self._log):
            for chunk in iter(lambda: stream.read1(4096), b""):
                log.extend(chunk)
                del log[:-8192]

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def append(self, frames: np.ndarray) -> None:
        frames = _check_frames(frames)
        height, width = frames.shape[1:3]
        if height % 2 or width % 2:
            raise UserError(f"H.264 yuv420p needs even frame sizes, got {width}x{height}")
        if self._proc is None:
            self._start(height, width)
        elif (height, width) != self._size:
            raise UserError(f"the frames of one video need one size: {self._size[1]}x{self._size[0]}, then "
                            f"{width}x{height}")  # fmt: skip
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except OSError:  # a broken pipe: ffmpeg stopped (a full disk mid-video, ...), and its exit says why
            self._closed = True
            failure = self._failure() or UserError(f"ffmpeg stopped before {self.path} was complete")
            self._ctx.__exit__(type(failure), failure, None)  # raises the one-line error of a refused write
            raise failure from None
        self.frames_written += len(frames)

    def _failure(self) -> Exception | None:
        """Wait for ffmpeg to end; the error its exit stands for, or None after a clean exit."""
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # the pipe's last buffer could not be delivered: ffmpeg has already gone
        code = self._proc.wait()
        self._reader.join(timeout=5)
        if code == 0:
            return None
        log = self._log.decode("utf-8", "replace")
        for refused in sorted(REFUSED):
            if os.strerror(refused) in log:
                return OSError(refused, os.strerror(refused))
        if code == -signal.SIGXFSZ:  # over the file-size limit (ulimit -f)
            return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        reason = ffmpeg_reason(log) if log.strip() else f"ffmpeg exited with status {code}"
        return UserError(f"ffmpeg could not write {self.path} ({reason}); nothing was written")

    def close(self, ok: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            failure = self._failure() if ok and self._proc is not None else None
        except BaseException:  # interrupted while ffmpeg finishes
            self._abort()
            raise
        if failure is not None:
            self._ctx.__exit__(type(failure), failure, None)  # raises the one-line error of a refused write
            raise failure
        if ok and self.frames_written:
            self._ctx.__exit__(None, None, None)
        else:
            self._abort()

    def _abort(self) -> None:
        """Drop the file: stop ffmpeg (it need not finish), remove the temporary."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:  # it ends at the pipe's end: leave no thread behind
            self._reader.join(timeout=5)
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
        raise UserError(
            f"video file not found: {path}"
            if not Path(path).exists()
            else f"{path} is not a video file (not a regular file)"
        )
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        fps = float(reader.get_meta_data().get("fps", DEFAULT_FPS))
        frames = np.stack([np.asarray(f, dtype=np.uint8)[..., :3] for f in reader])
        reader.close()
    except Exception as err:  # imageio raises several types for unreadable files
        reason = ffmpeg_reason(str(err)) if isinstance(err, OSError) else "not a video ffmpeg can open"
        raise UserError(f"cannot read video {path} ({reason}); give a complete video file (mp4)") from None
    if frames.size == 0:
        raise UserError(f"video {path} has no frames; give a complete video file (mp4)")
    return frames, fps
