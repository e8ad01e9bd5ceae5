"""Attention backends: SDPA by default; the flash path's varlen wiring (checked with a stand-in kernel on CPU)."""

import pytest
import torch
import torch.nn.functional as F

from tokentrim.errors import UserError
from tokentrim.wan import attention as attn


def reference_sdpa(q, k, v):
    """Plain softmax(q k^T / sqrt(D)) v per batch and head, written out: [B, L, H, D] layout."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float())


def varlen_stand_in(calls):
    """A CPU stand-in with flash-attn's varlen signature: attention inside each [cu[i], cu[i+1]) segment."""

    def run(q, k, v, cu_q, cu_k, max_q, max_k):
        calls.append((q.dtype, cu_q.tolist(), cu_k.tolist(), max_q, max_k))
        out = torch.empty_like(q)
        for i in range(len(cu_q) - 1):
            qs, ks = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
            out[qs] = reference_sdpa(q[None, qs], k[None, ks], v[None, ks])[0].to(q.dtype)
        return out

    return run


def test_sdpa_default_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 5, generator=g) for n in (7, 11, 11))
    torch.testing.assert_close(attn.attention(q, k, v), reference_sdpa(q, k, v), rtol=1e-5, atol=1e-5)


def test_flash_path_flattens_batch_and_casts_like_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(attn, "_flash_func", lambda: varlen_stand_in(calls))
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, n, 3, 8, generator=g) for n in (4, 6, 6))
    out = attn.flash_varlen(q, k, v)
    assert calls == [(torch.bfloat16, [0, 4, 8], [0, 6, 12], 4, 6)]  # fp32 inputs go in as bf16
    assert out.dtype == torch.float32 and out.shape == q.shape
    expected = reference_sdpa(*(x.to(torch.bfloat16) for x in (q, k, v)))
    torch.testing.assert_close(out, expected.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_flash_is_never_required_on_cpu(monkeypatch):
    monkeypatch.setattr(attn, "_flash_func", lambda: None)
    q = torch.randn(1, 3, 2, 4)
    assert torch.equal(attn.attention(q, q, q, backend="auto"), attn.attention(q, q, q))
    with pytest.raises(UserError, match="needs flash-attn"):
        attn.check_backend("flash")
    with pytest.raises(UserError, match="unknown"):
        attn.check_backend("xformers")
    assert attn.check_backend("auto") == "auto"


def test_removed_keys_leave_the_key_set():
    """Attention over a pruned key set equals attention with those keys masked out (they are really absent)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, n, 2, 4, generator=g) for n in (3, 9, 9))
    keep = torch.tensor([0, 1, 3, 4, 6, 8])
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[:, keep] = True
    masked = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    torch.testing.assert_close(attn.attention(q, k[:, keep], v[:, keep]), masked.transpose(1, 2))
