"""Observed starts: an image (`--init-image`) or the end of a video (`--init-video`) as the first latent frames
of a rollout (a `Request`'s `Start`, encoded by the VAE), read and checked before any weights load.

* Size: frames are brought to the model's frame size (latent grid x the VAE's spatial stride) either by
  `stretch` (bilinear resize, aspect ratio not kept — what the Causal Forcing reference does,
  docs/spec.md#image-to-video) or `crop` (scaled to cover, then the centre cut out). Upscaling by more than
  `MAX_UPSCALE` in either direction is done, with a warning (the start will be blurry); so is the conversion
  of an image that is not RGB (CMYK, grey, palette, with alpha).
* An image becomes the first block: for 1-frame blocks (Causal Forcing frame-wise) the image itself, one latent
  frame, as the reference; for b-frame blocks a still clip of the image repeated `1 + 4 (b - 1)` times (9 for
  3-frame blocks, b for the toy codec), which the causal VAE encodes to exactly one block. The output shows the
  image once (the clip's repeats are dropped) and then the generated frames.
* A video gives its last N frames (N encodes to a whole number of blocks: 1 + 4 k frames -> 1 + k latent frames
  with the Wan VAE), encoded as one clip. The output holds the generated frames only, or with `keep` the given
  video (at the model's size) followed by them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from tokentrim.errors import UserError
from tokentrim.pipelines import Start

RESIZE_MODES = ("stretch", "crop")
MAX_UPSCALE = 4.0  # beyond this the start is mostly interpolation: said in a warning
logger = logging.getLogger(__name__)
# What becomes of an image that is not RGB (PIL's modes), said in a warning.
NOT_RGB = {"RGBA": "its alpha channel is dropped", "LA": "grey in all three channels, alpha dropped",
           "L": "grey in all three channels", "1": "black and white in all three channels",
           "P": "its palette colours are used", "CMYK": "converted to RGB (colours may shift)",
           "I;16": "16-bit grey clipped to 8 bits"}  # fmt: skip


def latent_frames_of(video_frames: int, temporal: int) -> int | None:
    """Latent frames a causal encoder with temporal stride `temporal` makes of `video_frames` frames."""
    if temporal == 1:
        return video_frames if video_frames >= 1 else None
    return (
        1 + (video_frames - 1) // temporal
        if video_frames >= 1 and (video_frames - 1) % temporal == 0
        else None
    )


def video_frames_of(latent_frames: int, temporal: int) -> int:
    return latent_frames if temporal == 1 else 1 + temporal * (latent_frames - 1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resize(frames: np.ndarray, size: tuple[int, int], mode: str, what: str = "the frames") -> np.ndarray:
    """uint8 `[T, h, w, 3]` -> `[T, H, W, 3]` with size = (H, W): bilinear `stretch`, or `crop` (cover, centre).
    Upscaling by more than `MAX_UPSCALE` logs a warning naming `what`."""
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise UserError(f"`init_resize` must be one of {RESIZE_MODES}, got {mode!r}")
    height, width = size
    h, w = frames.shape[1:3]
    scales = (height / h, width / w)
    scale = max(scales)
    if scale > MAX_UPSCALE:
        how = (
            f"{scale:.3g}x" if mode == "crop" else f"{scales[0]:.3g}x in height and {scales[1]:.3g}x in width"
        )
        logger.warning("%s (%dx%d) is upscaled %s to the model's %dx%d frame; expect a blurry start",
                       what, w, h, how, width, height)  # fmt: skip
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        if mode == "crop":
            scale = max(width / image.width, height / image.height)
            w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
            image = image.resize((w, h), Image.BILINEAR)
            left, top = (w - width) // 2, (h - height) // 2
            image = image.crop((left, top, left + width, top + height))
        elif image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        out.append(np.asarray(image, dtype=np.uint8))
    return np.stack(out)


def image_start(
    path: str | os.PathLike, size: tuple[int, int], block: int, temporal: int, mode: str = "stretch"
) -> Start:
    """An image as the first block (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"`init_image` {path} not found")
    try:
        with Image.open(path) as image:
            kind = image.mode
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(
            f"`init_image` {path} is not an image PIL can read ({err}); give a PNG or JPEG"
        ) from None
    if kind != "RGB":
        done = NOT_RGB.get(kind, "converted to RGB")
        logger.warning("the start image %s is %s, not RGB: %s", path, kind, done)
    frame = resize(pixels[None], size, mode, what=f"the start image {path}")
    clip = video_frames_of(block, temporal)
    settings = {"kind": "image", "path": str(path), "sha256": _sha256(path), "resize": mode}
    return Start(np.repeat(frame, clip, axis=0), block, drop=(1, clip), settings=settings)


def video_start(
    path: str | os.PathLike,
    size: tuple[int, int],
    block: int,
    temporal: int,
    frames: int | None = None,
    mode: str = "stretch",
    keep: bool = False,
) -> Start:
    """The last `frames` frames of a video as the first blocks (default: one block's worth)."""
    from tokentrim.video import read_video

    path = Path(path)
    if not path.is_file():
        raise UserError(f"`init_video` {path} not found")
    n = video_frames_of(block, temporal) if frames is None else frames
    latents = latent_frames_of(n, temporal)
    if latents is None or latents % block:
        valid = ", ".join(str(video_frames_of(block * k, temporal)) for k in (1, 2, 3))
        raise UserError(f"`init_frames` must encode to whole {block}-frame blocks: {valid}, ..., got {n}")
    video, _ = read_video(path)
    if len(video) < n:
        raise UserError(f"`init_video` {path} has {len(video)} frames; `init_frames` {n} needs at least {n}")
    settings = {
        "kind": "video",
        "path": str(path),
        "sha256": _sha256(path),
        "frames": n,
        "resize": mode,
        "keep": keep,
    }
    what = f"the start video {path}"
    lead = resize(video, size, mode, what) if keep else None
    tail = lead[-n:] if lead is not None else resize(video[-n:], size, mode, what)
    return Start(tail, latents, drop=(0, n), lead=lead, settings=settings)
