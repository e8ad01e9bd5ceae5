"""The memory model of docs/benchmarks.md#memory-model: what a video needs on the GPU, part by part, per pipeline, and
its check against a measured peak RSS on the CPU.

    PYTHONPATH=. python scripts/memory_model.py table --json memory.json          # 480x832, bf16, on the meta device
    PYTHONPATH=. python scripts/memory_model.py rss --pipeline self_forcing --latent 16 16 --frames 6

`table` measures on the meta device (no memory, no weights, a few minutes of CPU), for each pipeline's shipped run
config (TokenTrim + FlowMo on block 0) and cache layout: the peak of live tensors over a rollout whose cache has
filled and rolled, with every block decoded as it finishes by the Wan2.1 VAE (streamed, as `tokentrim generate`
writes the mp4); the umT5-XXL encoder's forward; the exact sizes of weights, KV cache, text context and the
initial noise (the one part that grows with the video: every frame's noise is drawn on the device up front). The
device peak of a video is the larger of its two phases: encoding the prompt (DiT and umT5 weights on the device;
none when the prompt's embedding is cached on disk) and generating (DiT and VAE weights + the rollout's peak).
Attention is measured as the fused kernels allocate (`tokentrim.wan.memory.fused_attention`).

`rss` checks the model where it can be checked without a GPU: the full-size 1.3B DiT on the CPU, at a reduced
latent grid so that it runs in minutes. Prediction: the process's RSS before the model is built + the weights +
the same rollout's peak measured on the meta device. Run one at a time (the measured RSS is the process's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from tokentrim.app.run_config import default_config_path, load_run_config
from tokentrim.pipelines import REGISTRY, Request
from tokentrim.wan import build_model, get_preset
from tokentrim.wan.memory import GIB, PeakLiveBytes, fused_attention, parameter_bytes
from tokentrim.wan.quantize import weight_bytes
from tokentrim_core import TokenTrim
from tools.gpu_check.device_reads import DeviceReads

PIPELINES = ("self_forcing", "rolling_forcing", "causal_forcing_framewise", "longlive")
LENGTHS = {"5 s": 21, "30 s": 120, "5 min": 1200}  # latent frames: 1 + 4 (F - 1) video frames at 16 fps
# Rollout lengths measured: past the cache's capacity (it has rolled), a whole number of blocks.
MEASURED = {"self_forcing": 27, "rolling_forcing": 30, "causal_forcing_framewise": 24, "longlive": 18}


def rollout_peak(name: str, model, frames: int, layout: str, decoder=None) -> int:
    """Peak bytes of live tensors during one video (TokenTrim + FlowMo as the shipped run config says; a
    streaming decode of each finished block when `decoder` is given). `model` on the meta device or the CPU."""
    run = load_run_config(default_config_path(name))
    cfg, device = model.config, model.patch_embedding.weight.device
    dtype = model.patch_embedding.weight.dtype
    pipe = REGISTRY[name].pipeline(model, run.sampler, cache=layout)
    embeds = torch.zeros(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)
    noise = torch.zeros(
        1, frames, cfg.in_dim, cfg.latent_height, cfg.latent_width, device=device, dtype=dtype
    )
    stream = None if decoder is None else decoder.streaming()
    hook = TokenTrim(run.tokentrim, cfg.patch_size[1:])
    request = Request(embeds, frames, noise=noise, generator=torch.Generator(), hook=hook, flowmo=run.flowmo)
    with fused_attention(), DeviceReads(), PeakLiveBytes() as peak:
        for event in pipe.stream(request):
            if stream is not None:
                stream.decode(event.latents.to(device))
    return peak.peak


def meta_vae(dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    from tokentrim.wan.vae import WAN21_VAE_CONFIG, WanVAE

    with torch.device("meta"):
        model = AutoencoderKLWan(**WAN21_VAE_CONFIG)
    return WanVAE(model.to(dtype).eval().requires_grad_(False))


def text_encoder_parts(dtype: torch.dtype) -> tuple[int, int]:
    """(weights, forward peak) of umT5-XXL's encoder on a 512-token prompt, in bytes."""
    from transformers import UMT5Config, UMT5EncoderModel

    from tokentrim.wan.text_encoder import UMT5_XXL_CONFIG

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**UMT5_XXL_CONFIG)).to(dtype).eval()
    ids = torch.zeros(1, 512, dtype=torch.long, device="meta")
    with torch.no_grad(), DeviceReads(), PeakLiveBytes() as peak:  # its mask check reads one value
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return parameter_bytes(model), peak.peak


def table(args) -> dict:
    dtype = torch.bfloat16
    model = build_model("wan2.1-t2v-1.3b", device="meta").to(dtype)
    cfg = model.config
    noise_frame = (
        cfg.in_dim * cfg.latent_height * cfg.latent_width * torch.tensor([], dtype=dtype).element_size()
    )
    vae = meta_vae(dtype)
    t5_weights, t5_peak = text_encoder_parts(dtype)
    out = {"dtype": "bf16", "grid": [cfg.latent_height, cfg.latent_width], "dit_weights": parameter_bytes(model),
           "vae_weights": parameter_bytes(vae.model), "text_encoder_weights": t5_weights,
           "text_encoder_forward_peak": t5_peak, "noise_per_latent_frame": noise_frame, "pipelines": {}}  # fmt: skip
    try:
        from tokentrim.wan.quantize import quantize_dit

        int8 = quantize_dit(build_model("wan2.1-t2v-1.3b", device="meta").to(dtype), "int8")
        out["dit_weights_int8"] = weight_bytes(int8)
    except Exception as err:  # torchao missing or unable to quantise meta weights: reported, not guessed
        out["dit_weights_int8"] = f"not measured: {err}"
    for name in args.pipelines:
        for layout in args.layouts:
            frames = MEASURED[name]
            start = time.time()
            plain = rollout_peak(name, model, frames, layout)
            decoded = rollout_peak(name, model, frames, layout, vae)
            pipe = REGISTRY[name].pipeline(
                model, load_run_config(default_config_path(name)).sampler, cache=layout
            )
            cache = pipe.make_cache(1, torch.device("meta"), dtype).cache
            row = {"measured_frames": frames, "rollout_peak": plain, "rollout_peak_decoding": decoded,
                   "kv_cache": 2 * cache.k.numel() * cache.k.element_size(),
                   "noise_buffers": 2 if name == "rolling_forcing" else 1, "seconds": round(time.time() - start, 1)}  # fmt: skip
            out["pipelines"][f"{name}/{layout}"] = row
            print(name, layout, {k: round(v / GIB, 3) if k.startswith(("rollout", "kv")) else v
                                 for k, v in row.items()}, flush=True)  # fmt: skip
    return out


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: resident now; VmHWM: its peak)."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss(args) -> dict:
    """Predicted vs measured resident memory of the full-size DiT at a reduced latent grid, on the CPU (Linux):
    the weights (resident memory after building the model, less before) and one rollout (the peak resident memory
    during it, the kernel's high-water mark reset just before, less the resident memory at its start)."""
    from tokentrim.wan.model import init_weights

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    config = get_preset("wan2.1-t2v-1.3b").replace(latent_height=args.latent[0], latent_width=args.latent[1])
    predicted_peak = rollout_peak(
        args.pipeline, build_model(config, device="meta").to(dtype), args.frames, args.cache
    )
    before_model = status_bytes("VmRSS")
    model = build_model(config, device="meta").to(dtype).to_empty(device="cpu")  # no fp32 copy on the way
    init_weights(model, seed=0).eval().requires_grad_(False)
    weights = parameter_bytes(model)
    before = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    start = time.time()
    tracked_peak = rollout_peak(args.pipeline, model, args.frames, args.cache)
    peak = status_bytes("VmHWM")
    out = {"pipeline": args.pipeline, "cache": args.cache, "latent": args.latent, "frames": args.frames,
           "dtype": args.dtype, "tokens_per_frame": config.tokens_per_frame,
           "weights_predicted": weights, "weights_measured": before - before_model,
           "rollout_predicted": predicted_peak, "rollout_measured": peak - before,
           "rollout_tracked_on_cpu": tracked_peak, "rollout_s": round(time.time() - start, 1)}  # fmt: skip
    print(
        json.dumps(
            {k: (round(v / GIB, 4) if isinstance(v, int) and v > 2**20 else v) for k, v in out.items()}
        )
    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="the memory model at 480x832 (meta device)")
    t.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    t.add_argument("--layouts", nargs="+", default=["dynamic", "static"], choices=["dynamic", "static"])
    t.add_argument("--json")
    r = sub.add_parser("rss", help="predicted vs measured peak RSS on the CPU, reduced latent grid")
    r.add_argument("--pipeline", default="self_forcing", choices=PIPELINES)
    r.add_argument("--cache", default="dynamic", choices=["dynamic", "static"])
    r.add_argument("--latent", nargs=2, type=int, default=[16, 16], metavar=("H", "W"))
    r.add_argument("--frames", type=int, default=6)
    r.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    r.add_argument("--json")
    args = parser.parse_args(argv)
    result = table(args) if args.command == "table" else rss(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
