"""A procedural video world: coloured shapes moving at constant velocity and bouncing off the borders.

Everything follows from one seed: 1-3 shapes (circle, square, triangle) with distinct colours, sizes, start
positions and velocities, over a static background made of a smooth colour gradient and a low-contrast texture
(stripes, a checkerboard, or none). `sample_scene(seed).render(T)` gives uint8 frames `[T, S, S, 3]`; the same seed
also gives a one-sentence prompt naming every shape and the background (the toy text encoder's vocabulary).

Coordinates are in pixels, x to the right, y down, pixel (i, j) centred at (j + 0.5, i + 0.5). A shape of
half-extent r stays inside the frame: its centre moves in [r, S - r] on each axis and is reflected at the ends
(elastic bounce: the velocity component changes sign, its magnitude is kept). Shapes do not collide with each
other; later shapes are drawn over earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_SIZE = 32  # pixels; the toy model's frames are FRAME_SIZE x FRAME_SIZE

# Shape colours (sRGB). Backgrounds use the same names, rendered darker and desaturated (BACKGROUND_MIX).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (50, 190, 70),
    "blue": (50, 95, 235),
    "yellow": (245, 215, 50),
    "orange": (250, 140, 30),
    "purple": (160, 70, 200),
    "cyan": (50, 210, 220),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("striped", "checkered", "plain")
BACKGROUND_MIX = 0.45  # background base colour = BACKGROUND_MIX * named colour + (1 - BACKGROUND_MIX) * grey
BACKGROUND_GREY = 70.0
GRADIENT_AMPLITUDE = 20.0  # +- colour offset across the frame (per channel, random direction and sign)
TEXTURE_AMPLITUDE = 10.0  # +- brightness of the stripes / checkerboard
MIN_SHAPES, MAX_SHAPES = 1, 3
MIN_HALF_SIZE, MAX_HALF_SIZE = 4.5, 7.0  # in units of FRAME_SIZE / 32 pixels
MIN_SPEED, MAX_SPEED = 0.5, 1.3  # pixels per frame, in units of FRAME_SIZE / 32


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # a key of COLORS
    half_size: float  # half of the bounding-box side, pixels
    position: tuple[float, float]  # centre (x, y) at frame 0, pixels
    velocity: tuple[float, float]  # (vx, vy), pixels per frame, before any bounce


@dataclass(frozen=True)
class Scene:
    size: int  # frame height = width, pixels
    shapes: tuple[Shape, ...]  # in drawing order
    background: str  # a key of COLORS
    texture: str  # one of TEXTURES
    gradient: tuple[float, ...]  # (dx, dy, dr, dg, db): direction and per-channel colour offset
    texture_params: tuple[float, ...]  # stripes: (angle, period, phase); checkered: (cell, ox, oy); plain: ()

    @property
    def prompt(self) -> str:
        """E.g. "a red circle and a blue square bounce over a green striped background"."""
        names = [f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.color} {s.kind}" for s in self.shapes]
        subject = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        verb = "bounce" if len(names) > 1 else "bounces"
        if self.texture == "plain":
            return f"{subject} {verb} over a plain {self.background} background"
        return f"{subject} {verb} over a {self.background} {self.texture} background"

    def positions(self, num_frames: int) -> np.ndarray:
        """Shape centres `[T, num_shapes, 2]` (x, y) in pixels, float64, bounces included."""
        return self._motion(num_frames)[0]

    def velocities(self, num_frames: int) -> np.ndarray:
        """Instantaneous velocities `[T, num_shapes, 2]` (the sign flips at each bounce)."""
        return self._motion(num_frames)[1]

    def _motion(self, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
        t = np.arange(num_frames, dtype=np.float64)[:, None, None]  # (T, 1, 1)
        p0 = np.array([s.position for s in self.shapes])[None]  # (1, S, 2)
        v = np.array([s.velocity for s in self.shapes])[None]
        lo = np.array([s.half_size for s in self.shapes])[None, :, None]  # (1, S, 1)
        span = self.size - 2 * lo
        # Unfolded coordinate u, reflected into [0, span]: a triangle wave of period 2 * span.
        u = np.mod(p0 - lo + v * t, 2 * span)
        back = u > span
        pos = lo + np.where(back, 2 * span - u, u)
        vel = np.where(back, -v, v) * np.ones_like(pos)
        return pos, vel

    def render_background(self) -> np.ndarray:
        """Static background, float64 `[S, S, 3]` in 0..255 before rounding."""
        yy, xx = _pixel_grid(self.size)
        base = (
            BACKGROUND_MIX * np.array(COLORS[self.background], dtype=np.float64)
            + (1 - BACKGROUND_MIX) * BACKGROUND_GREY
        )
        dx, dy, *offset = self.gradient
        ramp = ((xx - self.size / 2) * dx + (yy - self.size / 2) * dy) / (self.size / 2)  # in [-1.4, 1.4]
        image = base + ramp[..., None] * np.array(offset)
        if self.texture == "striped":
            angle, period, phase = self.texture_params
            coord = xx * np.cos(angle) + yy * np.sin(angle)
            pattern = np.sin(2 * np.pi * coord / period + phase)
        elif self.texture == "checkered":
            cell, ox, oy = self.texture_params
            pattern = ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2) * 2 - 1
        else:
            pattern = np.zeros_like(xx)
        return image + TEXTURE_AMPLITUDE * pattern[..., None]

    def render(self, num_frames: int) -> np.ndarray:
        """Frames 0..num_frames-1 as uint8 `[T, S, S, 3]`; edges anti-aliased by signed-distance coverage."""
        if num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        yy, xx = _pixel_grid(self.size)
        background = self.render_background()
        positions = self.positions(num_frames)
        frames = np.empty((num_frames, self.size, self.size, 3), dtype=np.uint8)
        for i in range(num_frames):
            image = background.copy()
            for shape, (cx, cy) in zip(self.shapes, positions[i], strict=True):
                dist = _signed_distance(shape.kind, xx - cx, yy - cy, shape.half_size)
                alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]
                image = image * (1 - alpha) + alpha * np.array(COLORS[shape.color], dtype=np.float64)
            frames[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        return frames


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size, dtype=np.float64) + 0.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    return yy, xx


def _signed_distance(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) to a shape of half-extent r centred at 0."""
    if kind == "circle":
        return np.hypot(dx, dy) - r
    if kind == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    # Triangle with apex (0, -r) and base corners (+-r, r): the largest distance to its three edge lines.
    side = (2 * np.abs(dx) - dy - r) / np.sqrt(5.0)  # the two slanted edges: 2|x| - y <= r
    return np.maximum(side, dy - r)


def sample_scene(seed: int, size: int = FRAME_SIZE) -> Scene:
    """The scene of `seed`: shapes, colours, motion and background, all drawn from one numpy Generator."""
    rng = np.random.default_rng(seed)
    scale = size / 32
    names = list(COLORS)
    background = names[rng.integers(len(names))]
    texture = TEXTURES[rng.integers(len(TEXTURES))]
    count = int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))
    # Shape colours are distinct and differ from the background's colour name.
    colors = rng.choice([n for n in names if n != background], size=count, replace=False)
    shapes = []
    for color in colors:
        half = float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE)) * scale
        pos = tuple(float(p) for p in rng.uniform(half, size - half, size=2))
        speed = float(rng.uniform(MIN_SPEED, MAX_SPEED)) * scale
        angle = float(rng.uniform(0, 2 * np.pi))
        vel = (speed * float(np.cos(angle)), speed * float(np.sin(angle)))
        shapes.append(Shape(SHAPES[rng.integers(len(SHAPES))], str(color), half, pos, vel))
    direction = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-GRADIENT_AMPLITUDE, GRADIENT_AMPLITUDE, size=3)
    gradient = (float(np.cos(direction)), float(np.sin(direction)), *(float(o) for o in offset))
    if texture == "striped":
        params = (
            float(rng.uniform(0, np.pi)),
            float(rng.uniform(5, 9) * scale),
            float(rng.uniform(0, 2 * np.pi)),
        )
    elif texture == "checkered":
        params = (float(rng.uniform(4, 7) * scale), *(float(o) for o in rng.uniform(0, 8 * scale, size=2)))
    else:
        params = ()
    return Scene(size, tuple(shapes), background, texture, gradient, params)
