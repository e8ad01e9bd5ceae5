"""Train the toy world model (`--preset toy`): the causal Wan DiT + the toy text embedding, on moving shapes.

Flow matching with diffusion forcing (docs/toy.md):
  * a clip of `--frames` latent frames (blocks of `frames_per_block`) is rendered from a fresh scene seed and encoded
    by the pixel-unshuffle codec; its prompt comes from the same seed;
  * every block gets its own noise level: sigma_i of the shifted table `FlowMatchSchedule(shift)` at a uniform
    index i, and the model receives t = 1000 sigma per frame; blocks before a random split point, and each later
    block with probability `--clean-prob`, are clean (t = 0), as the context blocks the pipelines commit at t = 0;
  * x_t = (1 - sigma) x0 + sigma eps, target v = eps - x0, mean squared error over the noisy blocks only;
  * block-causal attention (`block_causal_mask`): a block sees itself and the earlier blocks.
adaLN-Zero initialisation, AdamW, linear warm-up then cosine decay, gradient-norm clipping, an exponential moving
average of the weights (the shipped weights). Writes `<out>.safetensors` and `<out>.json` (config, vocabulary,
command, loss curve, wall time) atomically, every `save_every` steps and at the end.

    PYTHONPATH=. python scripts/train_toy.py --steps 2400 --batch 8 --seed 0 --out tokentrim/toy/toy.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tokentrim.toy import CODEC, TEXT_PREFIX, TOY_CONFIG, VOCAB, WEIGHTS_PATH
from tokentrim.toy.codec import ToyCodec
from tokentrim.toy.text import ToyTextEncoder
from tokentrim.toy.world import sample_scene
from tokentrim.video import atomic_path
from tokentrim.wan import CausalWanModel, FlowMatchSchedule, WanConfig, block_causal_mask, build_model

logger = logging.getLogger("train_toy")
VALIDATION_SEED_OFFSET = 10_000_000  # validation scenes use seeds far from the training stream


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2600
    batch: int = 8
    frames: int = 12  # latent frames per clip (4 blocks of 3)
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    shift: float = 1.0  # noise-level table of the training sigmas: 1.0 = uniform in (0, 1]
    clean_prob: float = 0.15
    seed: int = 0
    val_batch: int = 16
    log_every: int = 50
    val_every: int = 250
    save_every: int = 500
    minutes: float | None = (
        None  # wall-time budget: the schedule follows time and training stops at the budget
    )

    def __post_init__(self) -> None:
        for name in (
            "steps",
            "batch",
            "frames",
            "warmup",
            "val_batch",
            "log_every",
            "val_every",
            "save_every",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.frames % TOY_CONFIG.frames_per_block:
            raise ValueError(f"TrainConfig.frames must be a multiple of {TOY_CONFIG.frames_per_block}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"TrainConfig.minutes must be positive, got {self.minutes}")
        if not 0 <= self.clean_prob < 1:
            raise ValueError(f"TrainConfig.clean_prob must be in [0, 1), got {self.clean_prob}")


def make_clips(seeds: list[int], frames: int, codec: ToyCodec) -> tuple[torch.Tensor, list[str]]:
    """Latents `[B, F, C, h, w]` and prompts of the scenes `seeds`."""
    scenes = [sample_scene(s, codec.frame_size) for s in seeds]
    video = torch.stack([torch.from_numpy(s.render(frames)) for s in scenes])  # (B, F, S, S, 3) uint8
    return codec.encode(video), [s.prompt for s in scenes]


def sample_noise_levels(
    batch: int, blocks: int, schedule: FlowMatchSchedule, clean_prob: float, gen: torch.Generator
) -> torch.Tensor:
    """Per-block sigma `[B, blocks]`: a clean prefix of random length, then independent levels (or clean)."""
    index = torch.randint(0, schedule.num_train_timesteps, (batch, blocks), generator=gen)
    sigma = schedule.sigmas[index]
    prefix = torch.randint(0, blocks, (batch, 1), generator=gen)  # blocks < prefix are clean
    clean = (torch.arange(blocks)[None] < prefix) | (torch.rand(batch, blocks, generator=gen) < clean_prob)
    return torch.where(clean, torch.zeros_like(sigma), sigma)


def flow_loss(
    model: CausalWanModel,
    text: ToyTextEncoder,
    x0: torch.Tensor,
    prompts: list[str],
    block_sigma: torch.Tensor,
    noise: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error of the flow prediction over the noisy blocks. x0, noise `[B, F, C, h, w]`."""
    fpb = model.config.frames_per_block
    sigma = block_sigma.repeat_interleave(fpb, dim=1)  # (B, F)
    s = sigma[..., None, None, None]
    x_t = (1 - s) * x0 + s * noise
    flow = model(x_t, 1000 * sigma, model.encode_context(text(prompts)), attn_mask=mask)
    err = (flow - (noise - x0)).pow(2).mean(dim=(2, 3, 4))  # (B, F)
    noisy = (sigma > 0).float()
    return (err * noisy).sum() / noisy.sum().clamp(min=1)


def load_weights(path: Path, model: CausalWanModel, text: ToyTextEncoder) -> None:
    """Toy weights into a built model and text encoder; a file from before the text position table (which
    then stays at its zero initialisation) is accepted, any other missing tensor is an error."""
    state = load_file(str(path))
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)})
    text_state = {k[len(TEXT_PREFIX) :]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    missing = text.load_state_dict(text_state, strict=False).missing_keys
    if set(missing) - {"position.weight"}:
        raise ValueError(f"{path} lacks the text tensors {missing}")


def validation(cfg: TrainConfig):
    """The fixed validation loss: scenes, noise levels and noise drawn once from seeds that depend on nothing
    else, so runs with different training seeds (and any weights file) are scored on the same data."""
    fpb = TOY_CONFIG.frames_per_block
    gen = torch.Generator().manual_seed(VALIDATION_SEED_OFFSET)
    x0, prompts = make_clips([VALIDATION_SEED_OFFSET + i for i in range(cfg.val_batch)], cfg.frames, CODEC)
    sigma = sample_noise_levels(
        cfg.val_batch, cfg.frames // fpb, FlowMatchSchedule(cfg.shift), cfg.clean_prob, gen
    )
    noise = torch.randn(x0.shape, generator=gen)
    mask = block_causal_mask(cfg.frames, fpb, TOY_CONFIG.tokens_per_frame)

    def validate(model: CausalWanModel, text: ToyTextEncoder) -> float:
        device = model.patch_embedding.weight.device
        x, s, n, m = (t.to(device) for t in (x0, sigma, noise, mask))
        with torch.no_grad():
            return flow_loss(model, text, x, prompts, s, n, m).item()

    return validate


def zero_init_residuals(model: CausalWanModel) -> None:
    """adaLN-Zero (Peebles & Xie 2023, the DiT paper's Sec. 3.2): every residual branch and the output start at
    zero.

    The per-frame modulation (shift, scale, gate) = block parameter + time projection, so both are zeroed; the
    ungated cross-attention output projection and the head projection are zeroed as well.
    """
    with torch.no_grad():
        for p in (model.time_projection[1].weight, model.time_projection[1].bias, model.head.modulation,
                  model.head.head.weight):  # fmt: skip
            p.zero_()
        for block in model.blocks:
            block.modulation.zero_()
            block.cross_attn.o.weight.zero_()


def params_of(model: CausalWanModel, text: ToyTextEncoder) -> list[torch.nn.Parameter]:
    return list(model.parameters()) + list(text.parameters())


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to `min_lr_ratio` as `progress` goes 0 -> 1."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    )


def save(out: Path, model: CausalWanModel, text: ToyTextEncoder, metadata: dict) -> None:
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(
        {TEXT_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in text.state_dict().items()}
    )
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(metadata, indent=1) + "\n")


def train(
    cfg: TrainConfig, out: Path, command: list[str], init: Path | None = None, device: str = "cpu"
) -> dict:
    """Train from adaLN-Zero initialisation, or continue from the weights `init` (a toy.safetensors), on
    `device`. Data and noise are drawn on the CPU from the seeds, so the data stream does not depend on it."""
    torch.manual_seed(cfg.seed)
    model_cfg: WanConfig = TOY_CONFIG
    model = build_model(model_cfg, device="cpu", seed=cfg.seed).train().requires_grad_(True)
    text = ToyTextEncoder(model_cfg.text_len, model_cfg.text_dim).train()
    earlier = None
    if init is None:
        zero_init_residuals(model)
    else:
        load_weights(init, model, text)
        meta_path = init.with_suffix(".json")
        earlier = json.loads(meta_path.read_text())["training"] if meta_path.is_file() else None
    model, text = model.to(device), text.to(device)
    ema_model, ema_text = (
        copy.deepcopy(model).requires_grad_(False),
        copy.deepcopy(text).requires_grad_(False),
    )
    ema_pairs = list(zip(params_of(ema_model, ema_text), params_of(model, text), strict=True))
    params = params_of(model, text)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.99),
    )
    schedule = FlowMatchSchedule(shift=cfg.shift)
    fpb = model_cfg.frames_per_block
    blocks = cfg.frames // fpb
    mask = block_causal_mask(cfg.frames, fpb, model_cfg.tokens_per_frame).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)

    validate = validation(cfg)

    curve, running, start = [], [], time.time()
    metadata = {
        "config": model_cfg.to_dict(),
        "codec": {"frame_size": CODEC.frame_size, "unshuffle": CODEC.factor, "channels": CODEC.z_dim},
        "vocab": list(VOCAB),
        "training": {
            "command": shlex.join(command),
            "train_config": cfg.__dict__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in params),
            "init": str(init) if init is not None else None,
            "device": str(device),
            "earlier": earlier,  # the training record of the `init` weights, when continued
        },
    }
    step, stop = 0, False
    while not stop:
        # Progress through the schedule: by steps, or by wall time when a budget is set (whichever is further).
        elapsed = time.time() - start
        progress = max(step / cfg.steps, elapsed / (60 * cfg.minutes) if cfg.minutes else 0.0)
        lr = lr_at(step, progress, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        seeds = [cfg.seed * 1_000_003 + step * cfg.batch + i for i in range(cfg.batch)]
        x0, prompts = make_clips(seeds, cfg.frames, CODEC)
        sigma = sample_noise_levels(cfg.batch, blocks, schedule, cfg.clean_prob, gen)
        noise = torch.randn(x0.shape, generator=gen)
        x0, sigma, noise = x0.to(device), sigma.to(device), noise.to(device)
        loss = flow_loss(model, text, x0, prompts, sigma, noise, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        ema_decay = min(cfg.ema, (1 + step) / (10 + step))  # short warm-up of the average
        with torch.no_grad():
            for e, p in ema_pairs:
                e.lerp_(p, 1 - ema_decay)
        running.append(loss.item())
        step += 1
        elapsed = time.time() - start
        stop = step == cfg.steps or (cfg.minutes is not None and elapsed >= 60 * cfg.minutes)
        if step % cfg.log_every == 0 or stop:
            point = {"step": step, "loss": sum(running) / len(running), "lr": lr,
                     "grad_norm": float(grad_norm), "elapsed_s": round(elapsed, 1)}  # fmt: skip
            if step % cfg.val_every == 0 or stop:
                point["val_loss"] = validate(model, text)
                point["val_loss_ema"] = validate(ema_model, ema_text)
            curve.append(point)
            running = []
            logger.info(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())
            )
        if step % cfg.save_every == 0 or stop:
            metadata["training"].update(
                steps=step, final_loss=curve[-1]["loss"], wall_time_s=round(time.time() - start, 1),
                final_val_loss_ema=next((p["val_loss_ema"] for p in reversed(curve) if "val_loss" in p), None),
                complete=stop, stopped_by=("steps" if step == cfg.steps else "time") if stop else None,
                curve=curve,
            )  # fmt: skip
            save(out, ema_model, ema_text, metadata)  # the shipped weights are the EMA
    return metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = TrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--frames", type=int, default=defaults.frames, help="latent frames per training clip")
    parser.add_argument("--clean-prob", type=float, default=defaults.clean_prob)
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-time budget: cosine schedule by time, stop when it is spent")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (the model trains there)")
    parser.add_argument("--validate", type=Path, default=None,
                        help="only print the fixed validation loss of these toy weights (.safetensors)")  # fmt: skip
    parser.add_argument("--init", type=Path, default=None,
                        help="continue from these toy weights (.safetensors) instead of a fresh start")  # fmt: skip
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (.safetensors)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr, frames=args.frames,
                      clean_prob=args.clean_prob, minutes=args.minutes)  # fmt: skip
    if args.out.suffix != ".safetensors":
        parser.error(f"--out must end in .safetensors, got {args.out}")
    if args.validate is not None:
        model = build_model(TOY_CONFIG, device="cpu").eval()
        text = ToyTextEncoder(TOY_CONFIG.text_len, TOY_CONFIG.text_dim)
        load_weights(args.validate, model, text)
        print(f"{args.validate}: validation loss {validation(cfg)(model, text):.4f}")
        return
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init} does not exist")
    command = [Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    meta = train(cfg, args.out, command, init=args.init, device=args.device)
    logger.info("wrote %s: %d steps, loss %.4f, %.0f s", args.out, meta["training"]["steps"],
                meta["training"]["final_loss"], meta["training"]["wall_time_s"])  # fmt: skip


if __name__ == "__main__":
    main()
