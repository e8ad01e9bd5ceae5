"""Rolling Forcing inference (spec §4.2): a window of K = len(steps) blocks at staggered noise levels, one
denoising pass per window, re-noising of every unfinished block, and a clean pass that commits the window's
oldest block. TokenTrim judges the block being finalised (the oldest, at its last level) after the window's
denoising pass and before the re-noising and the clean pass; a regeneration re-runs the window's denoising pass
on the pruned cache, so every block of the window takes the regenerated x0."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from tokentrim.errors import UserError
from tokentrim.pipelines import common
from tokentrim.wan.kv_cache import KVCache
from tokentrim.wan.model import CausalWanModel
from tokentrim.wan.scheduler import FlowMatchSchedule, check_sampler_steps
from tokentrim_core.flowmo import FlowMoConfig, applies
from tokentrim_core.hook import BlockHook


@dataclass(frozen=True)
class RollingForcingConfig:
    """Sampler settings (`configs/rolling_forcing_dmd.yaml` of the reference and its hard-coded cache sizes).

    cache_frames: KV buffer in latent frames (24 = anchor block + 7 blocks); attention_frames: the most frames
    any call attends to (21, the training length). The anchor is the first block, never evicted or pruned.
    """

    denoising_steps: tuple[float, ...] = (1000, 800, 600, 400, 200)
    warp_denoising_step: bool = True
    timestep_shift: float = 5.0
    context_noise: float = 0.0
    cache_frames: int = 24
    attention_frames: int = 21

    def __post_init__(self) -> None:
        check_sampler_steps(self.denoising_steps, self.timestep_shift)
        if len(self.denoising_steps) < 2:
            raise ValueError("denoising_steps needs at least 2 levels for a rolling window")
        if self.attention_frames > self.cache_frames:
            raise ValueError(f"attention_frames ({self.attention_frames}) must not exceed cache_frames")


class RollingForcingPipeline:
    def __init__(
        self, model: CausalWanModel, config: RollingForcingConfig = RollingForcingConfig(), vae=None
    ):
        self.model, self.config, self.vae = model, config, vae
        self.schedule = FlowMatchSchedule(config.timestep_shift)
        steps = config.denoising_steps
        self.timesteps = (
            self.schedule.warp(steps) if config.warp_denoising_step else torch.tensor(steps).float()
        )
        self.window_blocks = len(steps)

    def check_inputs(self, prompt_embeds: torch.Tensor, num_frames: int) -> None:
        common.check_prompt_embeds(self.model, prompt_embeds)
        self.check_num_frames(num_frames)

    def check_num_frames(self, num_frames: int) -> None:
        """The frame count against the model and this sampler's cache (no prompt needed: callable early)."""
        block = self.model.config.frames_per_block
        window = self.window_blocks * block
        common.check_frames(self.model, num_frames, window, "Rolling Forcing")
        if self.config.attention_frames < window + block:
            raise UserError(
                f"rolling_forcing.attention_frames ({self.config.attention_frames}) must hold the anchor block "
                f"and a {window}-frame window: set it to {window + block} or more"
            )

    @torch.no_grad()
    def __call__(
        self,
        prompt_embeds: torch.Tensor,
        num_frames: int,
        *,
        seed: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
        hook: BlockHook | None = None,
        flowmo: FlowMoConfig = FlowMoConfig(),
        on_block: common.BlockCallback | None = None,
        progress: bool = True,
    ) -> common.GenerationOutput:
        """Generate `num_frames` latent frames. `prefix` (optional): observed first frames, clean latents
        `[B, P, C, H, W]`; their blocks are committed first (the first one is the anchor), returned unchanged,
        the last of them is shown to the hook as its first block, and the windows then run over the remaining
        blocks exactly as over a whole video, at their true frame positions. The initial noise is drawn for all
        frames either way."""
        self.check_inputs(prompt_embeds, num_frames)
        model, cfg, block, k = (
            self.model,
            self.model.config,
            self.model.config.frames_per_block,
            self.window_blocks,
        )
        device, dtype = common.model_device_dtype(model)
        batch, num_blocks = prompt_embeds.shape[0], num_frames // block
        observed = common.check_prefix(model, prefix, batch, num_frames, k * block, "Rolling Forcing")
        # 1. initial noise first, then the text context and an empty cache
        noise, generator = common.prepare_noise(model, batch, num_frames, seed, noise, generator)
        context = model.encode_context(prompt_embeds.to(device))
        cache = KVCache(cfg, batch, self.config.cache_frames, mode="rolling_forcing", pinned_frames=block,
                        attention_frames=self.config.attention_frames, device=device, dtype=dtype)  # fmt: skip
        hook = hook or common.NoHook()
        steps = self.timesteps.to(device)
        noisy = torch.zeros_like(noise)  # `noisy_cache`: each unfinished block at its next noise level
        output = torch.empty_like(noise)
        losses: list[list[float]] = []
        common.commit_observed(model, prefix, observed, context, cache, output, hook, self.config.context_noise,
                               on_block)  # fmt: skip
        generated = num_blocks - observed
        for w in tqdm(range(generated + k - 1), desc="Rolling Forcing windows", disable=not progress):
            # blocks first..last are in the window; block b sits at level w - (b - observed) (0 = pure noise)
            first, last = observed + max(0, w - k + 1), observed + min(generated - 1, w)
            s, e = first * block, (last + 1) * block
            # 2. input: unfinished blocks from `noisy`, the newest block (while one enters) from the noise
            if e - s == k * block or first == observed:
                x = torch.cat([noisy[:, s : e - block], noise[:, e - block : e]], dim=1)
            else:
                x = noisy[:, s:e]
            level_of_first = w - (first - observed)
            t = steps[torch.arange(w - (last - observed), level_of_first + 1, device=device).flip(0)]
            t = t.repeat_interleave(block)[None].expand(batch, -1).contiguous()
            # Head windows commit their oldest block before it is final; without observed blocks that is block 0,
            # overwritten before any call reads it. After observed blocks it would be read as if earlier, so
            # there only final blocks are committed.
            commit_now = observed == 0 or level_of_first == k - 1
            if commit_now and s > 0 and cache.frame_indices[-1] < s:
                cache.make_room(block)  # a new block will be committed at the end of this window
            # 3. FlowMo on the blocks it applies to (each at the levels in flowmo.steps), then one denoising pass
            for b in range(first, last + 1):
                if applies(flowmo, b) and w - (b - observed) in flowmo.steps:
                    rows = slice((b - first) * block, (b - first + 1) * block)
                    x, step_losses = common.guide(model, self.schedule, x, t, context, cache, s, flowmo, rows)
                    losses.append(step_losses)
            x0 = common.predict_x0(model, self.schedule, x, t, context, cache, s)
            # 4. TokenTrim judges the block being finalised; a regeneration re-runs the window pass in place
            if level_of_first == k - 1:
                regenerate = functools.partial(self._regenerate, x0, x, t, context, cache, s)
                common.run_hook(hook, first, range(s, s + block), x0[:, :block], cache, regenerate)
            output[:, s:e] = x0
            # 5. re-noise every unfinished block to its next level; one full-window draw per block
            for b in range(first, last + 1):
                level = w - (b - observed)
                if level == k - 1:
                    continue
                eps = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype)
                renoised = self.schedule.add_noise(x0, eps, steps[level + 1].expand(x0.shape[:2]))
                noisy[:, b * block : (b + 1) * block] = renoised[
                    :, (b - first) * block : (b - first + 1) * block
                ]
            # 6. clean pass: the window's oldest block enters the cache
            if commit_now:
                common.commit(model, x0[:, :block], context, cache, s, self.config.context_noise)
            if level_of_first == k - 1 and on_block is not None:
                on_block(s, x0[:, :block])
        frames_out = self.vae.decode(output) if self.vae is not None else None
        return common.GenerationOutput(output, frames_out, list(hook.records), losses)

    def _regenerate(self, x0, x, t, context, cache, start) -> torch.Tensor:
        """Re-run the window's denoising pass on the pruned cache, in place; return the finalised block."""
        x0.copy_(common.predict_x0(self.model, self.schedule, x, t, context, cache, start))
        return x0[:, : self.model.config.frames_per_block]
