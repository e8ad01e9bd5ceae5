"""RoPE against an independently written real-arithmetic rotation (docs/spec.md#rope)."""

import math

import pytest
import torch

from tokentrim.wan import get_preset
from tokentrim.wan.rope import RopeTable, apply_rope


def rotate_by_hand(x, frame, row, col, dims):
    """Rotate one head vector: pair j uses axis (t, h, w) by position, angle = pos * 10000^(-2 i / d_axis)."""
    dt, dh, dw = dims
    out = x.clone()
    pairs = [(frame, dt, i) for i in range(dt // 2)] + [(row, dh, i) for i in range(dh // 2)]
    pairs += [(col, dw, i) for i in range(dw // 2)]
    for j, (pos, d_axis, i) in enumerate(pairs):
        angle = pos * 10000 ** (-2 * i / d_axis)
        a, b = x[2 * j].item(), x[2 * j + 1].item()
        out[2 * j] = a * math.cos(angle) - b * math.sin(angle)
        out[2 * j + 1] = a * math.sin(angle) + b * math.cos(angle)
    return out


@pytest.mark.parametrize("start_frame", [0, 7, 1000])
def test_grid_rotation_matches_hand_rotation(start_frame):
    c = get_preset("tiny")
    table = RopeTable(c)
    frames = 3 if start_frame < 1000 else 2
    x = torch.randn(1, frames * c.tokens_per_frame, c.num_heads, c.head_dim, dtype=torch.float64)
    y = apply_rope(x, table.grid_freqs(start_frame, frames, c.tokens_per_frame, "cpu"))
    for token in [0, 5, c.tokens_per_frame + 7, frames * c.tokens_per_frame - 1]:
        f, n = divmod(token, c.tokens_per_frame)
        row, col = divmod(n, c.grid_width)
        for head in range(c.num_heads):
            expected = rotate_by_hand(x[0, token, head], start_frame + f, row, col, c.rope_dims)
            torch.testing.assert_close(y[0, token, head], expected, rtol=1e-10, atol=1e-10)


def test_rope_is_relative_in_time():
    """q.k after rotation depends only on the frame difference: shifting both by an offset changes nothing."""
    c = get_preset("tiny")
    table = RopeTable(c)
    q = torch.randn(1, 1, 1, c.head_dim, dtype=torch.float64)
    k = torch.randn(1, 1, 1, c.head_dim, dtype=torch.float64)

    def score(fq, fk):
        n = torch.tensor([5])
        rq = apply_rope(q, table.token_freqs(torch.tensor([fq]), n))
        rk = apply_rope(k, table.token_freqs(torch.tensor([fk]), n))
        return (rq * rk).sum().item()

    assert score(10, 4) == pytest.approx(score(110, 104), abs=1e-9)
    assert score(10, 4) != pytest.approx(score(10, 5), abs=1e-6)


def test_table_size_and_dtype():
    c = get_preset("wan2.1-t2v-1.3b")
    table = RopeTable(c)
    assert [p.shape for p in table.parts] == [(1024, 22), (1024, 21), (1024, 21)]
    assert all(p.dtype == torch.complex128 for p in table.parts)
    with pytest.raises(ValueError, match="negative"):
        table.token_freqs(torch.tensor([-1]), torch.tensor([0]))


def test_table_grows_exactly_past_its_precomputed_positions():
    """Positions past the precomputed table are the closed form, bit for bit what a longer table holds."""
    small, big = RopeTable(get_preset("tiny").replace(rope_max_seq_len=64)), RopeTable(get_preset("tiny"))
    assert small.max_frames == 64
    frames, spatial = torch.tensor([0, 63, 64, 500, 1500]), torch.tensor([0, 5, 7, 23, 1])
    got = small.token_freqs(frames, spatial)
    assert small.max_frames >= 1501 and torch.equal(got[:4], big.token_freqs(frames[:4], spatial[:4]))
    for i, f in enumerate(frames.tolist()):  # against the hand rotation's angles
        angles = f * 10000 ** (-torch.arange(0, small.dims[0], 2, dtype=torch.float64) / small.dims[0])
        torch.testing.assert_close(got[i, : small.dims[0] // 2], torch.polar(torch.ones_like(angles), angles))
    assert torch.equal(small.grid_freqs(3000, 2, 24, "cpu"), RopeTable(get_preset("tiny").replace(
        rope_max_seq_len=4096)).grid_freqs(3000, 2, 24, "cpu"))  # fmt: skip


def test_bf16_input_is_rotated_in_float64_and_cast_back():
    c = get_preset("tiny")
    table = RopeTable(c)
    x = torch.randn(1, c.tokens_per_frame, c.num_heads, c.head_dim).to(torch.bfloat16)
    freqs = table.grid_freqs(3, 1, c.tokens_per_frame, "cpu")
    y = apply_rope(x, freqs)
    assert y.dtype == torch.bfloat16
    exact = apply_rope(x.double(), freqs)
    assert torch.equal(y, exact.to(torch.bfloat16))
