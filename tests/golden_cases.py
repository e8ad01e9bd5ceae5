"""Golden rollouts: fixed runs of both pipelines whose latents and decisions are recorded once
(`python tests/golden_cases.py --record`) and must be reproduced bit for bit by later code (refactors keep
outputs identical). The cases cover TokenTrim with prunes, FlowMo (first block, every block), observed prefixes,
fresh-noise regeneration, the rolling Self Forcing cache and Rolling Forcing eviction. The FlowMo cases were
recorded before issue 22 changed FlowMo's defaults; they name that setting (`FlowMoConfig.legacy`)."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "data" / "golden_latents.pt"
# A CPU reduction's result can depend on how many threads split it, so a bit-exact comparison runs a case with the
# thread count it was recorded with: its `threads` (default 2, the first recordings'; new ones use one thread, the
# test suite's).
RECORD_THREADS = 2


def platform_key() -> str:
    """Where bit-exact comparison is expected: same torch, same CPU kernel family."""
    return f"torch {torch.__version__} / {torch.backends.cpu.get_cpu_capability()} / {platform.machine()}"


def _case_list():
    import numpy as np

    from tokentrim.app.faults import Fault, FaultHook, region, token_mask
    from tokentrim.pipelines import (
        CausalForcingFramewiseConfig,
        CausalForcingFramewisePipeline,
        LongLiveConfig,
        LongLivePipeline,
        Request,
        RollingForcingConfig,
        RollingForcingPipeline,
        SelfForcingConfig,
        SelfForcingPipeline,
    )
    from tokentrim.toy import load_toy, observed_start
    from tokentrim.wan import build_model, get_preset
    from tokentrim_core import FlowMoConfig, TokenTrim, TokenTrimConfig

    tiny = get_preset("tiny")
    model = build_model(tiny, seed=3)
    embeds = torch.randn(1, 9, tiny.text_dim, generator=torch.Generator().manual_seed(5))
    embeds2 = torch.randn(2, 16, tiny.text_dim, generator=torch.Generator().manual_seed(6))
    eager = TokenTrimConfig(lam=0.0, warmup=1)  # prunes often on random weights

    def sf(cfg=SelfForcingConfig(), m=model):
        return SelfForcingPipeline(m, cfg)

    def rf(cfg=RollingForcingConfig(), m=model):
        return RollingForcingPipeline(m, cfg)

    def cf(cfg=CausalForcingFramewiseConfig(), m=model):
        return CausalForcingFramewisePipeline(m, cfg)

    def ll(cfg=LongLiveConfig(), m=model):
        return LongLivePipeline(m, cfg)

    toy, toy_text, _ = load_toy()
    prompt, prefix = observed_start(20_000_001)
    with torch.no_grad():
        toy_embeds = toy_text([prompt])
    other = torch.randn(1, 9, tiny.text_dim, generator=torch.Generator().manual_seed(9))
    fresh = dict(regen_noise="fresh")

    def fault_run(pipe, kind):
        """A fault of `kind` on 6 tokens of block 4 (`tokentrim stress`), TokenTrim at the paper's settings."""
        cfg = toy.config
        tokens = region((cfg.grid_height, cfg.grid_width), 6, np.random.default_rng(0))
        mask = token_mask(tokens, (cfg.grid_height, cfg.grid_width), cfg.patch_size[1:])
        hook = FaultHook(TokenTrim(TokenTrimConfig(), cfg.patch_size[1:]), Fault(kind, 4, tokens, 0), mask)
        return pipe(Request(toy_embeds, 36 if kind == "blob" else 30, seed=0, start=prefix, hook=hook))

    cases = {
        "sf_tiny_plain_30": lambda: sf()(Request(embeds, 30, seed=0)),
        "sf_tiny_prune_flowmo_30": lambda: sf()(Request(
            embeds, 30, seed=1, tokentrim=eager, flowmo=FlowMoConfig.legacy(mode="first_block", steps=(0,)),
        )),
        "sf_tiny_prune_fresh_every_block_15": lambda: sf(SelfForcingConfig(**fresh))(Request(
            embeds, 15, seed=2, tokentrim=TokenTrimConfig(lam=0.0, warmup=1, max_regen=2),
            flowmo=FlowMoConfig.legacy(mode="every_block", steps=(0, 1), iterations=2),
        )),
        "sf_tiny_nosink_batch2_24": lambda: sf(SelfForcingConfig(sink_frames=0, cache_frames=9))(Request(
            embeds2, 24, seed=3, tokentrim=eager,
        )),
        "rf_tiny_plain_21": lambda: rf()(Request(embeds, 21, seed=0)),
        "rf_tiny_prune_flowmo_45": lambda: rf()(Request(
            embeds, 45, seed=4, tokentrim=eager, flowmo=FlowMoConfig.legacy(mode="first_block", steps=(0, 1)),
        )),
        "rf_tiny_every_block_batch2_18": lambda: rf()(Request(
            embeds2, 18, seed=5, tokentrim=eager,
            flowmo=FlowMoConfig.legacy(mode="every_block", steps=(1,), iterations=1, checkpointing=False),
        )),
        "sf_tiny_prefix_21": lambda: sf()(Request(
            embeds, 21, seed=6, tokentrim=eager,
            start=torch.randn(1, 6, 16, 8, 12, generator=torch.Generator().manual_seed(7)),
        )),
        "rf_tiny_prefix_27": lambda: rf()(Request(
            embeds, 27, seed=7, tokentrim=eager,
            start=torch.randn(1, 6, 16, 8, 12, generator=torch.Generator().manual_seed(8)),
        )),
        "sf_toy_prefix_36": lambda: sf(SelfForcingConfig(timestep_shift=1.0), toy)(Request(
            toy_embeds, 36, seed=0, tokentrim=TokenTrimConfig(lam=0.5), start=prefix,
        )),
        "rf_toy_prefix_30": lambda: rf(RollingForcingConfig(timestep_shift=1.0), toy)(Request(
            toy_embeds, 30, seed=0, tokentrim=TokenTrimConfig(lam=0.5), start=prefix,
        )),
        # Recorded before the stream refactor (Request / BlockEvent): FlowMo's current defaults, Causal Forcing
        # frame-wise, LongLive (both RoPE modes) and prompt switches, and an injected fault on the toy. The two
        # fault cases were re-recorded (--only) when the fault itself changed: a blob is the region's own mean
        # shifted by C block stds, a noise burst C stds (C = 3), and the faulted block is the reference TokenTrim
        # judges the next block against; every other case was reproduced unchanged by that code.
        "sf_tiny_default_flowmo_prune_18": lambda: sf()(Request(
            embeds, 18, seed=8, tokentrim=eager, flowmo=FlowMoConfig(mode="first_block"),
        )),
        "rf_tiny_default_flowmo_prune_30": lambda: rf()(Request(
            embeds, 30, seed=9, tokentrim=eager, flowmo=FlowMoConfig(mode="first_block", steps=(0, 1)),
        )),
        "cf_tiny_fresh_flowmo_12": lambda: cf(CausalForcingFramewiseConfig(
            denoising_steps=(1000, 500), first_block_steps=(1000, 750, 500, 250), **fresh,
        ))(Request(embeds, 12, seed=10, tokentrim=eager, flowmo=FlowMoConfig(mode="first_block"))),
        "cf_tiny_prefix_every_block_9": lambda: cf()(Request(
            embeds, 9, seed=11, tokentrim=eager, flowmo=FlowMoConfig(mode="every_block"),
            start=torch.randn(1, 1, 16, 8, 12, generator=torch.Generator().manual_seed(12)),
        )),
        "ll_tiny_switch_keep_24": lambda: ll()(Request(
            embeds, 24, seed=12, tokentrim=eager, switches=((9, other), (18, embeds)),
        )),
        "ll_tiny_slot_switch_reset_30": lambda: ll(LongLiveConfig(rope="slot", global_sink=False,
                                                                  switch_pruning="reset"))(Request(
            embeds, 30, seed=13, tokentrim=eager, switches=((21, other),),
        )),
        "sf_tiny_rolling_switch_keep_27": lambda: sf(SelfForcingConfig(cache_frames=9, sink_frames=3))(Request(
            embeds, 27, seed=14, tokentrim=eager, switches=((15, other),),
        )),
        "sf_toy_fault_blob_36": lambda: fault_run(sf(SelfForcingConfig(timestep_shift=1.0), toy), "blob"),
        "rf_toy_fault_noise_30": lambda: fault_run(rf(RollingForcingConfig(timestep_shift=1.0), toy), "noise"),
    }  # fmt: skip
    return cases


def _records(out) -> list[dict]:
    rows = []
    for r in out.records:
        r = r if isinstance(r, dict) else r.to_dict()
        rows.append(
            {k: r[k] for k in ("block", "action", "pruned_positions", "tokens_removed", "regenerations")}
        )
    return rows


def run_cases(names=None) -> dict:
    """The cases (all, or `names`), on the caller's torch thread count (`RECORD_THREADS` for a bit-exact
    comparison)."""
    results = {}
    for name, fn in _case_list().items():
        if names is not None and name not in names:
            continue
        out = fn()
        results[name] = {"latents": out.latents.clone(), "records": _records(out),
                         "flowmo_losses": [list(map(float, x)) for x in out.flowmo_losses]}  # fmt: skip
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", action="store_true")
    parser.add_argument(
        "--only", nargs="+", help="re-record just these cases (an intended, explained change)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads to record with")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run_cases(args.only)
    for name, r in results.items():
        pruned = sum(x["action"] == "prune" for x in r["records"])
        print(
            f"{name}: latents {list(r['latents'].shape)}, {pruned} prunes, {len(r['flowmo_losses'])} guided"
        )
    if args.record:  # each case keeps the platform it was recorded on (`platform` of the file: the default)
        kept = (
            torch.load(GOLDEN, weights_only=True) if args.only else {"platform": platform_key(), "cases": {}}
        )
        results = {
            name: {**r, "platform": platform_key(), "threads": args.threads} for name, r in results.items()
        }
        torch.save({"platform": kept["platform"], "cases": {**kept["cases"], **results}}, GOLDEN)
        print(f"recorded {GOLDEN}")
