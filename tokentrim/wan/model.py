"""The causal Wan2.1 DiT (inference), with the original Wan parameter names so official checkpoints load as is.

Numerics follow docs/spec.md#numerics: everything runs in the model dtype (bf16 for the official runs) except the
RMSNorm statistics (fp32), RoPE (complex128) and the timestep sinusoid (fp64, then cast). Shapes: B batch, F
latent frames, T tokens per frame, L = F*T, H heads, D head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokentrim.wan.attention import attention
from tokentrim.wan.config import WanConfig, get_preset
from tokentrim.wan.kv_cache import CallPlan, KVCache, LayerKV
from tokentrim.wan.rope import RopeTable, apply_rope


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Timestep embedding `[N, dim]` in float64: [cos(t w), sin(t w)], w_j = 10000^(-j/(dim/2))."""
    half = dim // 2
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), omega)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class RMSNorm(nn.Module):
    """RMS norm over the full width (all heads jointly), statistics in fp32 (docs/spec.md#transformer-block)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Non-affine LayerNorm applied in x's dtype (no explicit upcast, docs/spec.md#transformer-block)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


class Attention(nn.Module):
    """Projections q, k, v, o with RMS-normalised q and k (shared by self- and cross-attention)."""

    def __init__(self, config: WanConfig):
        super().__init__()
        dim = config.dim
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, config.eps)
        self.norm_k = RMSNorm(dim, config.eps)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))  # (B, L, H, D)


@dataclass
class ContextCache:
    """Cross-attention keys and values of the text context, one `[B, text_len, H, D]` pair per layer."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class WanBlock(nn.Module):
    def __init__(self, config: WanConfig):
        super().__init__()
        self.eps = config.eps
        self.self_attn = Attention(config)
        self.norm3 = nn.LayerNorm(config.dim, eps=config.eps, elementwise_affine=True)
        self.cross_attn = Attention(config)
        self.ffn = nn.Sequential(
            nn.Linear(config.dim, config.ffn_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.ffn_dim, config.dim),
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, config.dim) / math.sqrt(config.dim))

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        freqs: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        kv: LayerKV | None,
        attn_mask: torch.Tensor | None,
        backend: str,
    ) -> torch.Tensor:
        """x `[B, F*T, dim]` at modulation e0 `[B, F, 6, dim]`; freqs `[F*T, D/2]` the RoPE factors of its tokens;
        ctx_k / ctx_v `[B, text_len, H, D]`; kv: this layer's share of the KV cache (None: no cache)."""
        b, f = e0.shape[:2]
        # (B, F, 6, dim) -> six (B, F, 1, dim) chunks broadcast over each frame's tokens
        sh1, sc1, g1, sh2, sc2, g2 = (self.modulation.unsqueeze(0) + e0).unsqueeze(3).unbind(2)

        def per_frame(h):  # (B, L, dim) <-> (B, F, T, dim)
            return h.unflatten(1, (f, -1))

        # 1. self-attention with the temporal KV cache
        h = (per_frame(layer_norm(x, self.eps)) * (1 + sc1) + sh1).flatten(1, 2)
        a = self.self_attn
        q = a.heads(a.norm_q(a.q(h)))
        k_raw = a.heads(a.norm_k(a.k(h)))
        v = a.heads(a.v(h))
        q, k = apply_rope(q, freqs), apply_rope(k_raw, freqs)
        if kv is not None:  # a cached call's mask is its view's, or one given over the dynamic layout's keys
            k, v, view_mask = kv.attend(k, k_raw, v)
            assert attn_mask is None or view_mask is None, (
                "a mask given to a cached call needs the dynamic cache"
            )
            attn_mask = view_mask if attn_mask is None else attn_mask
        y = a.o(attention(q, k, v, backend, attn_mask).flatten(2))
        x = x + (per_frame(y) * g1).flatten(1, 2)
        # 2. cross-attention to the text (no gate, no modulation)
        c = self.cross_attn
        q = c.heads(c.norm_q(c.q(self.norm3(x))))
        x = x + c.o(attention(q, ctx_k, ctx_v, backend).flatten(2))
        # 3. feed-forward
        h = (per_frame(layer_norm(x, self.eps)) * (1 + sc2) + sh2).flatten(1, 2)
        return x + (per_frame(self.ffn(h)) * g2).flatten(1, 2)


class Head(nn.Module):
    def __init__(self, config: WanConfig):
        super().__init__()
        self.eps = config.eps
        self.head = nn.Linear(config.dim, config.patch_channels)
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / math.sqrt(config.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # e: (B, F, dim) time embedding (not the projection)
        shift, scale = (self.modulation.unsqueeze(0) + e.unsqueeze(2)).unsqueeze(3).unbind(2)
        h = layer_norm(x, self.eps).unflatten(1, (e.shape[1], -1)) * (1 + scale) + shift
        return self.head(h)  # (B, F, T, patch_channels)


class CausalWanModel(nn.Module):
    """Wan2.1 DiT for block-causal inference with a `KVCache`.

    `forward(x, t, context, cache, plan, start_frame)` maps latents `x [B, F, C, H, W]` at per-frame timesteps
    `t [B, F]` to the flow prediction `[B, F, C, H, W]`. With a cache, the `plan` (built by the pipeline's cache
    policy for these frames) says what each layer reads and writes. Without a cache, attention spans the call's
    own tokens, optionally restricted by a boolean `attn_mask [L, L]` (the block-causal training mask); with the
    dynamic cache an `attn_mask [Lq, Lk]` over the keys in the plan's order masks some of them (Rolling Forcing's
    prune_window).
    """

    def __init__(self, config: WanConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(WanBlock(c) for _ in range(c.num_layers))
        self.head = Head(c)
        self.rope = RopeTable(c)  # plain attribute: complex128, never in the state dict, never cast
        self.attention_backend = "sdpa"
        self.gradient_checkpointing = False

    # Text context -------------------------------------------------------------------------------------------
    def encode_context(self, prompt_embeds: torch.Tensor) -> ContextCache:
        """Cross-attention K/V for `prompt_embeds [B, S <= text_len, text_dim]`, computed once per video."""
        b, s, _ = prompt_embeds.shape
        if s > self.config.text_len:
            raise ValueError(f"prompt_embeds has {s} rows, more than text_len={self.config.text_len}")
        ctx = prompt_embeds.to(self.patch_embedding.weight.dtype)
        # zero rows up to text_len; they are embedded and attended (docs/spec.md#forward-pass)
        if s < self.config.text_len:
            ctx = torch.cat([ctx, ctx.new_zeros(b, self.config.text_len - s, ctx.shape[2])], dim=1)
        ctx = self.text_embedding(ctx)
        keys, values = [], []
        for block in self.blocks:
            c = block.cross_attn
            keys.append(c.heads(c.norm_k(c.k(ctx))))
            values.append(c.heads(c.v(ctx)))
        return ContextCache(keys, values)

    # Forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: ContextCache,
        cache: KVCache | None = None,
        plan: CallPlan | None = None,
        start_frame: int = 0,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        b, f, _, h, w = x.shape
        assert (cache is None) == (plan is None), "a cached call needs its plan"
        assert plan is None or (plan.start_frame, plan.num_frames) == (start_frame, f), (
            "plan is for other frames"
        )
        if (h, w) != (cfg.latent_height, cfg.latent_width):
            raise ValueError(
                f"latents are {h}x{w}, the model config expects {cfg.latent_height}x{cfg.latent_width}"
            )
        dtype = self.patch_embedding.weight.dtype
        # 1. patch embedding: (B, F, C, H, W) -> (B, C, F, H, W) -> (B, F*T, dim), frame-major then row, column
        tokens = self.patch_embedding(x.to(dtype).transpose(1, 2)).flatten(2).transpose(1, 2)
        # 2. per-frame time embedding and its 6-way modulation
        e = self.time_embedding(sinusoid(t.flatten(), cfg.freq_dim).to(dtype))  # (B*F, dim)
        e0 = self.time_projection(e).unflatten(1, (6, cfg.dim)).unflatten(0, (b, f))  # (B, F, 6, dim)
        # 3. RoPE factors for the call's frames at their absolute index
        rope_frame = start_frame if plan is None or plan.rope_frame is None else plan.rope_frame
        freqs = self.rope.grid_freqs(rope_frame, f, cfg.tokens_per_frame, x.device)
        # 4. transformer blocks, each with its layer of the cache
        view = None if cache is None else cache.view(plan)
        for i, block in enumerate(self.blocks):
            kv = None if view is None else view.layer(i)
            args = (
                tokens,
                e0,
                freqs,
                context.keys[i],
                context.values[i],
                kv,
                attn_mask,
                self.attention_backend,
            )
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)
        if plan is not None:
            cache.finish(plan)
        # 5. head and unpatchify: (B, F, T, ph*pw*C) -> (B, F, C, H, W)
        return unpatchify(self.head(tokens, e.unflatten(0, (b, f))), cfg)


def unpatchify(out: torch.Tensor, cfg: WanConfig) -> torch.Tensor:
    """(B, F, T, ph*pw*C) -> (B, F, C, H, W): channel o = (q*pw + r)*C + c of token (h, w) -> pixel (c, h*ph+q, w*pw+r)."""
    b, f = out.shape[:2]
    _, ph, pw = cfg.patch_size
    out = out.reshape(b, f, cfg.grid_height, cfg.grid_width, ph, pw, cfg.out_dim)
    return out.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, f, cfg.out_dim, cfg.latent_height, cfg.latent_width)


def block_causal_mask(
    num_frames: int, frames_per_block: int, tokens_per_frame: int, device=None
) -> torch.Tensor:
    """Boolean `[L, L]` mask: a token of block b attends to every token of blocks <= b."""
    block = torch.arange(num_frames, device=device).div(frames_per_block, rounding_mode="floor")
    block = block.repeat_interleave(tokens_per_frame)
    return block[:, None] >= block[None, :]


def init_weights(model: CausalWanModel, seed: int | None = None) -> CausalWanModel:
    """Seeded random initialisation (tiny / random-weight runs): Xavier-uniform weights, zero biases."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv3d):
            fan_in = module.weight[0].numel()
            fan_out = module.weight.shape[0] * (module.weight[0, 0].numel() if module.weight.dim() > 2 else 1)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 2 * bound - bound)
                module.bias.zero_()
        elif isinstance(module, nn.LayerNorm | RMSNorm):
            with torch.no_grad():
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    with torch.no_grad():
        for p in [b.modulation for b in model.blocks] + [model.head.modulation]:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(model.config.dim))
    return model


def build_model(
    preset_or_config: str | WanConfig,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = 0,
) -> CausalWanModel:
    """Build the DiT for a preset name or a `WanConfig`.

    On the meta device the parameters are left unallocated (load them with `load_dit_checkpoint`); otherwise
    they get a seeded random initialisation. The model is put in eval mode with gradients disabled.
    """
    config = get_preset(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    with torch.device("meta"):
        model = CausalWanModel(config)
    if torch.device(device).type != "meta":
        model = model.to_empty(device="cpu")
        init_weights(model, seed)
        model = model.to(device=device, dtype=dtype)
    model.eval().requires_grad_(False)
    return model
