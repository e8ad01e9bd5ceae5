"""The GPU fast path, judged on the CPU (issue 21): TokenTrim's removal compacts the KV cache in place, the
TokenTrim decision is the one device-to-host transfer of a block, and nothing else in the block loops reads
device data on the host. Host reads are counted by running the loops on the meta device (values-free tensors,
`tools.gpu_check.device_reads`, a verification tool beside the package), where any read other than the counted ones fails."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tokentrim.pipelines import (
    Request,
    RollingForcingConfig,
    RollingForcingPipeline,
    SelfForcingConfig,
    SelfForcingPipeline,
)
from tokentrim.wan import KVCache, build_model, get_preset
from tokentrim.wan.kv_cache import CachedFrame
from tokentrim_core import FlowMoConfig, TokenTrim, TokenTrimConfig
from tokentrim_core.drift import unstable_set
from tokentrim_core.trim import _decision_to_host
from tools.gpu_check.device_reads import DeviceReads

C = get_preset("tiny")
T = C.tokens_per_frame
DECISION = "tokentrim_core.trim:_decision_to_host"
OUTPUT = "tokentrim.pipelines.common:finished"  # the finished block's copy into the CPU output
FLOWMO = "tokentrim_core.flowmo:keep"  # FlowMo's loss, read for its keep-best rule


def filled_cache(frames: int, pinned: int, device="cpu", batch: int = 2) -> KVCache:
    """A cache holding `frames` complete frames (the first `pinned` pinned) with random keys and values."""
    cache = KVCache(C, batch, frames + 1, device=device)
    if device != "meta":
        gen = torch.Generator().manual_seed(frames)
        cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
        cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    cache.frames = [CachedFrame(i, torch.arange(T), False, i < pinned) for i in range(frames)]
    return cache


def expected_after(cache: KVCache, drop: set[int], frames: set[int] | None) -> tuple[torch.Tensor, ...]:
    """The buffers after removing spatial `drop` from unpinned `frames`, from the bookkeeping alone: the kept
    rows, in order, gathered to the front; every later row as it was."""
    kept, row = [], 0
    for f in cache.frames:
        for n in f.spatial.tolist():
            if f.pinned or (frames is not None and f.index not in frames) or n not in drop:
                kept.append(row)
            row += 1
    out = []
    for buf in (cache.k, cache.v):
        new = buf.clone()
        new[:, :, : len(kept)] = torch.stack([buf[:, :, r] for r in kept], dim=2)
        out.append(new)
    return tuple(out)


@pytest.mark.parametrize(
    "frames, pinned, rounds",
    [
        (5, 1, [([1, 5], None)]),  # every unpinned frame
        (6, 0, [([0, T - 1], None), ([2, 3, 4], None)]),  # a frame's first and last rows; then a second round
        (6, 3, [([4], {3, 5})]),  # chosen frames only
        (4, 0, [(list(range(0, T, 2)), None)]),  # half of every frame: chunks cross frame boundaries
        (3, 2, [([T - 1], None)]),  # only the last row of the last frame: nothing moves
    ],
)
def test_removal_compacts_in_place_as_a_gather_of_the_kept_rows(frames, pinned, rounds):
    cache = filled_cache(frames, pinned)
    buffers = cache.k.data_ptr(), cache.v.data_ptr()
    for positions, chosen in rounds:
        k, v = expected_after(cache, set(positions), chosen)
        held = [
            set(f.spatial.tolist())
            for f in cache.frames
            if f.index >= pinned and f.index in (chosen or [f.index])
        ]
        removed = cache.remove_positions(torch.tensor(positions), frames=chosen)
        assert removed == sum(len(h & set(positions)) for h in held)
        assert torch.equal(cache.k, k) and torch.equal(cache.v, v)
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == buffers  # the preallocated buffers, not copies


def test_removal_counts_tokens_and_keeps_bookkeeping():
    cache = filled_cache(4, 1)
    assert cache.remove_positions(torch.tensor([3, 7, 7])) == 2 * 3
    assert cache.remove_positions(torch.tensor([3, 8])) == 1 * 3  # 3 is already gone
    assert cache.length == 4 * T - 3 * 3
    assert cache.positions(0).tolist() == list(range(T))
    assert cache.positions(2).tolist() == [n for n in range(T) if n not in (3, 7, 8)]


class OutputSizes(TorchDispatchMode):
    """Records the number of elements of every tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.sizes.append(t.numel())
        return out


def test_removal_temporaries_hold_one_frame_per_layer():
    """The old removal gathered the whole cache into a temporary (6.4 GiB for Rolling Forcing at 1.3B size)."""
    cache = filled_cache(8, 1, batch=1)
    one_frame = C.num_layers * 1 * T * C.num_heads * C.head_dim
    with OutputSizes() as sizes:
        cache.remove_positions(torch.tensor([0, 5, 9]))
    assert max(sizes.sizes) == one_frame
    assert cache.k.numel() >= 8 * one_frame


def test_removal_reads_nothing_from_the_device():
    cache = filled_cache(5, 1, device="meta")
    with DeviceReads() as reads:
        assert cache.remove_positions(torch.tensor([2, 4])) == 2 * 4
    assert reads.reads == []
    # positions on the device cost exactly one copy to the host
    with DeviceReads() as reads:
        cache.remove_positions(torch.zeros(3, dtype=torch.long, device="meta"))
    assert reads.counts() == {"tokentrim.wan.kv_cache:remove_positions": 1}


@pytest.mark.parametrize("severity", [0.0, 1e-30, 3.4e38, 0.1, 123.456])
def test_decision_copy_equals_separate_reads(severity):
    d = torch.rand(2, 5000, generator=torch.Generator().manual_seed(1))
    d[0, 17] = severity
    indices, d_t = unstable_set(d, 0.01)
    scores = d.mean(dim=0)[indices] * severity  # the detector's scores of the set, float32
    host_severity, host_indices, host_scores = _decision_to_host(d_t, indices, scores)
    assert host_severity == d_t.item() and type(host_severity) is float
    assert host_indices.dtype == torch.long and host_indices.device.type == "cpu"
    assert host_indices.tolist() == indices.tolist()
    assert host_scores == scores.tolist()
    big = torch.tensor([2**52 + 3, 2**40 + 1])  # indices far beyond any token grid survive exactly
    assert _decision_to_host(d_t, big, torch.zeros(2))[1].tolist() == big.tolist()


def test_verdict_positions_are_host_tensors():
    hook = TokenTrim(TokenTrimConfig(lam=0.0, warmup=0), patch=(2, 2))
    gen = torch.Generator().manual_seed(0)
    blocks = [torch.randn(1, 3, 4, 8, 12, generator=gen) * (1 + 5 * i) for i in range(3)]
    verdicts = [hook.propose(i, range(3 * i, 3 * i + 3), x) for i, x in enumerate(blocks)]
    pruned = [v for v in verdicts if v.prune]
    assert pruned and all(v.positions.device.type == "cpu" for v in pruned)
    assert hook.records[-1].pruned_positions == pruned[-1].positions.tolist()


def test_device_reads_counts_reads_of_meta_tensors_only():
    t = torch.ones(3, device="meta")
    cpu = torch.ones(2)
    out = torch.zeros(3)
    with DeviceReads() as reads:
        assert t.sum().item() == 0.0  # the stand-in value
        assert t.tolist() == [0.0, 0.0, 0.0] and not bool(t[0])
        assert t.to("cpu").device.type == "cpu" and t.to(torch.float64).device.type == "meta"
        out[:] = t
        assert cpu.tolist() == [1.0, 1.0]  # CPU tensors as usual
        with pytest.raises(NotImplementedError):
            t.nonzero()  # a value-dependent shape still fails
    assert reads.reads == [f"{__name__}:test_device_reads_counts_reads_of_meta_tensors_only"] * 5
    with pytest.raises(RuntimeError, match="meta"):
        t.sum().item()  # the patches are gone


def rising_severities():
    """Stand-in values: the decision's copy gets rising severities (so, with lam = 0, every judged block after
    the warm-up is pruned once and its regeneration accepted) and positions 0 .. k-1; anything else zeros."""
    severity = [0.0]

    def answer(site: str, t: torch.Tensor) -> torch.Tensor:
        value = torch.zeros(t.shape, dtype=t.dtype)
        if site == DECISION:
            severity[0] += 1.0
            value[0] = severity[0]
            value[1:] = torch.arange(t.shape[0] - 1)
        return value

    return answer


LOOPS = {
    "self_forcing_rolling_cache": (lambda m: SelfForcingPipeline(m, SelfForcingConfig(cache_frames=9)), 15),
    "rolling_forcing": (lambda m: RollingForcingPipeline(m, RollingForcingConfig()), 18),
}


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("flowmo", ["off", "first_block"])
def test_block_loop_reads_the_device_once_per_decision_and_output(loop, flowmo):
    """Per block: one transfer per TokenTrim judgement (candidate and regeneration) and the finished block's copy
    to the CPU output; FlowMo's guided block adds one read of its loss per evaluation. Nothing else: any other
    host read, or a value-dependent shape, fails on the meta device."""
    make, frames = LOOPS[loop]
    pipeline = make(build_model(C, device="meta"))
    blocks = frames // C.frames_per_block
    embeds = torch.zeros(1, 9, C.text_dim, device="meta")
    noise = torch.zeros(1, frames, C.in_dim, C.latent_height, C.latent_width, device="meta")
    hook = TokenTrim(TokenTrimConfig(lam=0.0, warmup=1), C.patch_size[1:])
    fm = FlowMoConfig(mode=flowmo, steps=(0,), iterations=1)
    with DeviceReads(rising_severities()) as reads:
        pipeline(Request(embeds, frames, noise=noise, generator=torch.Generator(), hook=hook, flowmo=fm))
    actions = [r.action for r in hook.records]
    assert actions == ["warmup", "warmup"] + ["prune"] * (blocks - 2)
    judged = (blocks - 1) + (blocks - 2)  # block 0 has no previous block; blocks 2.. are judged twice
    expected = {DECISION: judged, OUTPUT: blocks}
    if flowmo == "first_block":
        expected[FLOWMO] = (
            fm.iterations + 1
        )  # block 0, step 0: each Adam step's loss and the last evaluation's
    assert reads.counts() == expected
