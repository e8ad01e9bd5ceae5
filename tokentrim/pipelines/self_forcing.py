"""Self Forcing inference (spec §4.1): 3-frame blocks, a few denoising steps each, then a clean pass at
t = context_noise that writes the block into the KV cache. TokenTrim decides after the block's final x0 and
before its clean pass."""

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
class SelfForcingConfig:
    """Sampler settings (`configs/self_forcing_dmd.yaml` of the reference, plus the rolling cache).

    cache_frames: KV-cache length in latent frames (`local_attn_size`); 21 = the training length, which for
    videos of up to 21 frames is exactly the reference's global cache.
    sink_frames: frames at the start kept forever once the cache rolls (`sink_size`); 3 = the first block.
    rolling: evict the oldest non-sink frames when full; False reproduces the reference's hard 21-frame limit.
    """

    denoising_steps: tuple[float, ...] = (1000, 750, 500, 250)
    warp_denoising_step: bool = True
    timestep_shift: float = 5.0
    context_noise: float = 0.0
    cache_frames: int = 21
    sink_frames: int = 3
    rolling: bool = True

    def __post_init__(self) -> None:
        check_sampler_steps(self.denoising_steps, self.timestep_shift)
        if self.cache_frames <= 0:
            raise ValueError(f"cache_frames must be positive, got {self.cache_frames}")
        if not 0 <= self.sink_frames < self.cache_frames:
            raise ValueError(f"sink_frames must be in [0, cache_frames), got {self.sink_frames}")


class SelfForcingPipeline:
    def __init__(self, model: CausalWanModel, config: SelfForcingConfig = SelfForcingConfig(), vae=None):
        self.model, self.config, self.vae = model, config, vae
        self.schedule = FlowMatchSchedule(config.timestep_shift)
        steps = config.denoising_steps
        self.timesteps = (
            self.schedule.warp(steps) if config.warp_denoising_step else torch.tensor(steps).float()
        )

    def check_inputs(self, prompt_embeds: torch.Tensor, num_frames: int) -> None:
        common.check_prompt_embeds(self.model, prompt_embeds)
        self.check_num_frames(num_frames)

    def check_num_frames(self, num_frames: int) -> None:
        """The frame count against the model and this sampler's cache (no prompt needed: callable early)."""
        common.check_frames(self.model, num_frames, self.model.config.frames_per_block, "Self Forcing")
        block, c = self.model.config.frames_per_block, self.config
        if c.cache_frames < c.sink_frames + block:
            raise UserError(
                f"cache_frames ({c.cache_frames}) must hold the sink ({c.sink_frames}) and one block"
            )
        if not c.rolling and num_frames > c.cache_frames:
            raise UserError(
                f"{num_frames} latent frames do not fit the {c.cache_frames}-frame global cache; "
                "set self_forcing.rolling=true (rolling cache with sink frames) or use fewer frames"
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
        regen_noise: str = "same",
        on_block: common.BlockCallback | None = None,
        progress: bool = True,
    ) -> common.GenerationOutput:
        """Generate `num_frames` latent frames. `prefix` (optional): observed first frames, clean latents
        `[B, P, C, H, W]`; their blocks are committed to the cache as they are (no denoising, no draws) and
        returned unchanged, the last of them is shown to the hook as its first block, and generation continues
        from there. The initial noise is drawn for all frames either way."""
        self.check_inputs(prompt_embeds, num_frames)
        model, cfg, block = self.model, self.model.config, self.model.config.frames_per_block
        device, dtype = common.model_device_dtype(model)
        batch = prompt_embeds.shape[0]
        observed = common.check_prefix(model, prefix, batch, num_frames, block, "Self Forcing")
        # 1. initial noise first, then the text context and an empty cache
        noise, generator = common.prepare_noise(model, batch, num_frames, seed, noise, generator)
        context = model.encode_context(prompt_embeds.to(device))
        cache = KVCache(cfg, batch, self.config.cache_frames, mode="self_forcing",
                        pinned_frames=self.config.sink_frames, device=device, dtype=dtype)  # fmt: skip
        hook = hook or common.NoHook()
        self._steps = self.timesteps.to(device)  # once per call: no host transfer inside the block loop
        output = torch.empty_like(noise)
        losses: list[list[float]] = []
        common.commit_observed(model, prefix, observed, context, cache, output, hook, self.config.context_noise,
                               on_block)  # fmt: skip
        for j in tqdm(range(observed, num_frames // block), desc="Self Forcing blocks", disable=not progress):
            s = j * block
            frames = range(s, s + block)
            cache.make_room(block)  # 2. evict before the block's first step
            x_init = noise[:, s : s + block]
            guided = flowmo if applies(flowmo, j) else None
            # 3. the candidate block, from its noise; the re-noising draws are kept for a regeneration
            x0, draws = self._denoise_block(x_init, s, context, cache, generator, None, guided, losses)

            regenerate = functools.partial(
                self._regenerate, x_init, s, context, cache, generator, draws, regen_noise, guided, losses
            )
            # 4. TokenTrim: accept, or prune the cache and regenerate
            x0 = common.run_hook(hook, j, frames, x0, cache, regenerate)
            output[:, s : s + block] = x0
            # 5. clean pass: the accepted block enters the cache
            common.commit(model, x0, context, cache, s, self.config.context_noise)
            if on_block is not None:
                on_block(s, x0)
        frames_out = self.vae.decode(output) if self.vae is not None else None
        return common.GenerationOutput(output, frames_out, list(hook.records), losses)

    def _regenerate(
        self, x_init, start, context, cache, generator, draws, regen_noise, flowmo, losses
    ) -> torch.Tensor:
        """The block again on the pruned cache, by the candidate's procedure (FlowMo guidance included): from
        the same noise and draws, or from fresh noise."""
        if regen_noise == "fresh":
            x_init = torch.randn(x_init.shape, generator=generator, device=x_init.device, dtype=x_init.dtype)
            draws = None
        return self._denoise_block(x_init, start, context, cache, generator, draws, flowmo, losses)[0]

    def _denoise_block(self, x, start, context, cache, generator, draws, flowmo, losses):
        """Run the step list on one block: x0 = G(x, t_i); x = add_noise(x0, eps_i, t_{i+1}).

        `draws` replays earlier re-noising draws (same-noise regeneration); otherwise they are drawn, in the
        reference order: one `[B, 3, C, H, W]` standard-normal draw per step but the last.
        """
        used = []
        steps = self._steps
        shape = x.shape[:2]
        for i, step in enumerate(steps):
            t = step.expand(shape).to(torch.float32)
            if flowmo is not None and i in flowmo.steps:
                x, step_losses = common.guide(self.model, self.schedule, x, t, context, cache, start, flowmo)
                losses.append(step_losses)
            x0 = common.predict_x0(self.model, self.schedule, x, t, context, cache, start)
            if i + 1 < len(steps):
                eps = draws[i] if draws is not None else torch.randn(
                    x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # fmt: skip
                used.append(eps)
                x = self.schedule.add_noise(x0, eps, steps[i + 1].expand(shape))
        return x0, used
