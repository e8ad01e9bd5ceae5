"""The memory model of docs/benchmarks.md#memory-model: what a video needs on the GPU, part by part, per pipeline, and
its check against a measured peak RSS on the CPU.

    PYTHONPATH=. python scripts/memory_model.py table --layouts dynamic --json memory.json   # 480x832, bf16, meta
    PYTHONPATH=. python scripts/memory_model.py rss --pipeline self_forcing --latent 24 24 --frames 6

`table` measures on the meta device (no memory, no weights; about 15 minutes of one CPU core):
- exact sizes: the weights of the DiT (bf16 and int8), the Wan2.1 VAE and umT5-XXL's encoder, one latent frame,
  the KV cache of each pipeline, the text context;
- peaks of live tensors (`tokentrim.wan.memory.PeakLiveBytes`): umT5-XXL's forward on a 512-token prompt; the
  VAE's decoder streamed block by block (as `tokentrim generate` writes the mp4) and a whole video decoded at once
  (21 and 120 latent frames; longer ones on the line through these two); for each pipeline's shipped run config
  (TokenTrim + FlowMo on block 0) and cache layout, a rollout whose cache has filled and rolled. Attention is
  measured as the fused kernels allocate (`tokentrim.wan.memory.fused_attention`).
`derive` turns these into each pipeline's activations and its device peak (`tokentrim.wan.memory.VideoMemory`) at
5 s, 30 s and 5 min for each option of `OPTIONS`.

`rss` checks the model where it can be checked without a GPU: the full-size 1.3B DiT on the CPU, at a reduced
latent grid so that it runs in minutes. Predicted: the weights' exact size, and the same rollout's peak measured
on the meta device; measured: the growth of the process's resident memory when the model is built, and its peak
during the rollout. Run it alone (the measured RSS is the process's).
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
from tokentrim.wan.memory import (
    GIB,
    LENGTHS,
    PeakLiveBytes,
    VideoMemory,
    context_bytes,
    fused_attention,
    kv_cache_bytes,
    latent_bytes,
    parameter_bytes,
)
from tokentrim.wan.quantize import weight_bytes
from tokentrim_core import TokenTrim
from tools.gpu_check.device_reads import DeviceReads

PIPELINES = ("self_forcing", "rolling_forcing", "causal_forcing_framewise", "longlive")
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


def decode_peaks(vae, config, lengths: list[int], block: int = 3) -> dict:
    """Peaks of the VAE's decoder at the full grid (meta device): a video decoded block by block as `tokentrim
    generate` streams it (the same for any length), and each of `lengths` decoded at once (`WanVAE.decode`)."""
    latents = torch.zeros(1, max(lengths), config.in_dim, config.latent_height, config.latent_width,
                          device="meta", dtype=vae.dtype)  # fmt: skip
    with DeviceReads(), PeakLiveBytes() as streamed:
        stream = vae.streaming()
        for s in range(0, 2 * block, block):  # the first block and a later one (4 frames per latent frame)
            stream.decode(latents[:, s : s + block])
    whole = {}
    for frames in lengths:
        with DeviceReads(), PeakLiveBytes() as peak:
            vae.decode(latents[:, :frames])
        whole[frames] = peak.peak
    return {"streamed": streamed.peak, "whole": whole}


def video_memory(out: dict, key: str, *, whole_decode_at: int | None, int8: bool) -> VideoMemory:
    """The `VideoMemory` of one pipeline/layout of `table`'s measurements. whole_decode_at: decode a video of
    that many latent frames at once (None: streamed); int8: the DiT's block linears in int8."""
    row = out["pipelines"][key]
    whole = {int(k): v for k, v in out["decode_whole"].items()}  # keys are text once read from JSON
    decode = out["decode_streamed"] if whole_decode_at is None else whole_decode(whole, whole_decode_at)
    return VideoMemory(dit=out["dit_weights_int8" if int8 else "dit_weights"], vae=out["vae_weights"],
                       text_encoder=out["text_encoder_weights"], text_encoder_forward=out["text_encoder_forward_peak"],
                       rollout=row["rollout_peak"], decode=decode, latent_frame=out["latent_frame"],
                       measured_frames=row["measured_frames"], growing=row["growing"])  # fmt: skip


def whole_decode(measured: dict[int, int], frames: int) -> int:
    """The peak of decoding `frames` latent frames at once: measured, or on the line through the two longest
    measured lengths (the decoder's peak grows by the decoded frames it keeps; docs/benchmarks.md#memory-model)."""
    if frames in measured:
        return measured[frames]
    (f0, p0), (f1, p1) = sorted(measured.items())[-2:]
    return p1 + (p1 - p0) * (frames - f1) // (f1 - f0)


# The options of the memory model, each adding one to the previous:
# (label, text encoder kept on the device, decode streamed, prompt encoded in this run, DiT int8).
OPTIONS = (("bf16, all on the device", True, False, True, False),
           ("+ text encoder off after encoding", False, False, True, False),
           ("+ VAE decode streamed", False, True, True, False),
           ("+ prompt embedding from the disk cache", False, True, False, False),
           ("+ int8/fp8 DiT weights", False, True, False, True))  # fmt: skip


def derive(out: dict) -> None:
    """Adds to `table`'s measurements: each pipeline's activations (its rollout peak less the KV cache, the text
    context and the latent buffers inside it) and the device peak per pipeline (dynamic cache), length and
    option, with its phases."""
    for row in out["pipelines"].values():
        inside = (row["growing"] - 1) * row["measured_frames"] * out["latent_frame"]
        row["activations"] = row["rollout_peak"] - row["kv_cache"] - out["text_context"] - inside
    out["peaks"] = {}
    for name in (k for k in out["pipelines"] if "/" not in k):
        for length, frames in LENGTHS.items():
            for label, kept, streamed, encode, int8 in OPTIONS:
                if int8 and not isinstance(out["dit_weights_int8"], int):
                    continue
                m = video_memory(out, name, whole_decode_at=None if streamed else frames, int8=int8)
                phases = m.phases(frames, text_encoder_on_device=kept, encode=encode)
                top = max(phases, key=phases.get)
                out["peaks"][f"{name} | {length} | {label}"] = {"peak": phases[top], "phase": top, **phases}


def table(args) -> dict:
    dtype = torch.bfloat16
    model = build_model("wan2.1-t2v-1.3b", device="meta").to(dtype)
    cfg = model.config
    vae = meta_vae(dtype)
    t5_weights, t5_peak = text_encoder_parts(dtype)
    decode = decode_peaks(vae, cfg, sorted({21, 120, *args.whole_decode}))
    out = {"dtype": "bf16", "grid": [cfg.latent_height, cfg.latent_width], "dit_weights": parameter_bytes(model),
           "vae_weights": parameter_bytes(vae.model), "text_encoder_weights": t5_weights,
           "text_encoder_forward_peak": t5_peak, "latent_frame": latent_bytes(cfg, 1, dtype),
           "kv_per_frame": kv_cache_bytes(cfg, 1, dtype), "text_context": context_bytes(cfg, dtype),
           "decode_streamed": decode["streamed"], "decode_whole": decode["whole"], "pipelines": {}}  # fmt: skip
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
            pipe = REGISTRY[name].pipeline(
                model, load_run_config(default_config_path(name)).sampler, cache=layout
            )
            cache = pipe.make_cache(1, torch.device("meta"), dtype).cache
            row = {"measured_frames": frames, "rollout_peak": rollout_peak(name, model, frames, layout),
                   "kv_cache": 2 * cache.k.numel() * cache.k.element_size(), "cache_frames": cache.k.shape[2] // cfg.tokens_per_frame,
                   "growing": 2 if name == "rolling_forcing" else 1, "seconds": round(time.time() - start, 1)}  # fmt: skip
            out["pipelines"][name if layout == "dynamic" else f"{name}/{layout}"] = row
            print(name, layout, {k: round(v / GIB, 3) if k.startswith(("rollout", "kv")) else v
                                 for k, v in row.items()}, flush=True)  # fmt: skip
    derive(out)
    for key, row in out["peaks"].items():
        print(f"{key}: {row['peak'] / GIB:.2f} GiB ({row['phase']})")
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
    t.add_argument(
        "--whole-decode",
        nargs="*",
        type=int,
        default=[],
        help="more lengths decoded at once (default 21, 120)",
    )
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
