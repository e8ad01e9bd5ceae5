"""The TokenTrim controller: drift-triggered KV-cache pruning with one regeneration (paper Sec. 4, Algorithm 1).

`TokenTrimController` makes the decisions for any block loop (`judge`, `regenerated`, `settle`; recipes for other
projects' loops in docs/integrations.md); `TokenTrim` is the `BlockHook` through which this project's loops use it.

Decision rule, block by block (block = one AR chunk; indices count from 0):
1. Block 0 has no previous block: action "warmup", severity None; it becomes the reference Z_prev.
2. The first `warmup` blocks that have a drift value (blocks 1..warmup) are accepted as "warmup"; their
   severity D_t enters the statistics. A block is also accepted as "warmup" while no value has been accepted.
3. Later blocks: "prune" if D_t > mu + lam·sigma (strict, Eq. 8), else "accept" and D_t enters the statistics.
4. After a prune the loop regenerates the block and calls `regenerated`. The regenerated block's severity
   D* is measured against the same Z_prev. With max_regen = 1 (the paper's R = 1) it is accepted as is; with
   max_regen > 1 it is pruned again (with its own unstable set) while D* is still above the threshold. The
   accepted block becomes Z_prev, and the statistics receive D* ("regenerated"), D_t ("candidate") or
   nothing ("skip"), per `stats_after_regen`.
5. Which attempt is accepted: the last regeneration (`accept="regenerated"`, the paper's rule), or, an addition of
   this project, whichever of the candidate and its regenerations has the lowest severity (`accept="lower"`; ties
   go to the later attempt). The verdict says which (`Verdict.keep`), the record too (`kept`, 0 = candidate); the
   pruned positions stay removed either way. "regenerated" statistics then take the kept attempt's severity.
With enabled=False every block is scored and recorded with action "off" and nothing is pruned; the statistics
still accumulate every severity, so a baseline log shows where the threshold would have been.
With max_regen = 0 nothing is regenerated: a block above the threshold is accepted (detection only) with
"triggered": True in its record.
Steps 1–3 use the paper's scoring rule (`tokentrim_core.detectors.PaperRule`); another `Detector` may replace it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .detectors import Detector, PaperRule, TokenwiseRule
from .drift import latent_summary, token_drift
from .hook import BlockRecord, Verdict
from .options import check_options, option
from .stats import RunningStats

STATS_AFTER_REGEN = ("regenerated", "candidate", "skip")
DETECTORS = ("paper", "tokenwise")
ACCEPT = ("regenerated", "lower")


@dataclass(frozen=True)
class TokenTrimConfig:
    """TokenTrim settings; the defaults are the paper's (p = 0.1, lambda = 2, T_warm = 2, R = 1). Each field is
    declared once here (`tokentrim_core.options`): its range, its help, and where a front end shows it.

    At a prompt switch (an addition of this project; docs/longlive.md): switch_exempt makes the first block after
    the switch a new reference (action "switch": scored, never pruned, not in the statistics); switch_stats
    "reset" starts the statistics and the warm-up again, "keep" keeps them. How a regeneration draws its noise and
    whether a re-cache keeps pruned positions are the loops' settings (`regen_noise`, `switch_pruning` of the
    sink-cache samplers).

    detector: "paper" (Eq. 6–8 with p, lam, min_std) or "tokenwise" (beyond the paper, docs/tokentrim.md#5-beyond-the-paper-the-token-wise-detector: each
    token's drift against its own history, with p, tokenwise_level and tokenwise_floor).
    """

    enabled: bool = option(
        True, "prune and regenerate; false: score and log every block only (the baseline)", label="TokenTrim"
    )
    p: float = option(
        0.1,
        "pruning fraction: the top p of spatial tokens by drift form the unstable set (Eq. 6)",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
        flag="--p",
        label="p",
    )
    lam: float = option(
        2.0,
        "trigger when D_t > mean + lam * std of the accepted blocks (Eq. 8)",
        low=0.0,
        flag="--lam",
        label="λ",
    )
    warmup: int = option(
        2, "blocks with a drift value that only feed the statistics (T_warm)", low=0, flag="--warmup"
    )
    max_regen: int = option(1, "regenerations per block (R); 0: detect only", low=0, flag="--max-regen")
    stats_after_regen: str = option(
        "regenerated", "what a regenerated block adds to the statistics", choices=STATS_AFTER_REGEN
    )
    min_std: float = option(0.0, "floor on the statistics' std (0: the paper's rule)", low=0.0)
    accept: str = option(
        "regenerated",
        "which attempt is kept: the last regeneration (the paper) or the lower severity (an ablation)",
        choices=ACCEPT,
    )
    switch_exempt: bool = option(True, "the first block after a prompt switch is the new reference")
    switch_stats: str = option(
        "reset", "the statistics and the warm-up at a prompt switch", choices=("keep", "reset")
    )
    detector: str = option(
        "paper",
        "the scoring rule: the paper's (Eq. 6-8) or each token against its own history (docs/tokentrim.md)",
        choices=DETECTORS,
    )
    tokenwise_level: float = option(
        4.0, "tokenwise detector: trigger when the unstable set's mean score exceeds this level", low=0.0
    )
    tokenwise_floor: float = option(
        0.5, "tokenwise detector: each token's deviation floored at this fraction of its mean drift", low=0.0
    )

    def __post_init__(self) -> None:
        check_options(self)


def make_detector(config: TokenTrimConfig) -> Detector:
    """The scoring rule `config.detector` names: the paper's (Eq. 6–8) or the token-wise one
    (docs/tokentrim.md#5-beyond-the-paper-the-token-wise-detector)."""
    if config.detector == "tokenwise":
        return TokenwiseRule(config.p, config.tokenwise_level, config.tokenwise_floor)
    return PaperRule(config.p, config.lam, config.min_std)


def _decision_to_host(
    severity: torch.Tensor, indices: torch.Tensor, scores: torch.Tensor
) -> tuple[float, torch.Tensor, list[float]]:
    """D_t (float32 0-dim), the unstable set (long [k]) and its scores (float32 [k]) in one device-to-host copy,
    packed as float64 [1 + 2k]: float64 holds every float32 and every index below 2^53 exactly, so the values
    equal separate reads. Returns (D_t as a Python float, the indices as a host long [k], the scores)."""
    k = indices.shape[0]
    packed = torch.cat([severity.reshape(1).double(), indices.double(), scores.double()]).cpu()
    return float(packed[0]), packed[1 : 1 + k].long(), packed[1 + k :].tolist()


class _ScoreTimer:
    """Scoring time of one candidate. On the CPU: the host clock. On CUDA: device events around the scoring
    kernels plus the host time after the decision's copy; the events are read only once that copy has
    synchronised (they have completed by then, so reading them waits for nothing). Without a copy (block 0: no
    previous block) only the host time is counted."""

    def __init__(self, device: torch.device):
        self._start = time.perf_counter()
        self._copied: float | None = None
        self._events = None
        if device.type == "cuda":
            self._stream = torch.cuda.current_stream(device)
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record(self._stream)

    def queued(self) -> None:
        """The scoring kernels are queued; the decision's copy comes next."""
        if self._events is not None:
            self._events[1].record(self._stream)

    def copied(self) -> None:
        """The decision's copy has returned (the stream has run everything queued before it)."""
        self._copied = time.perf_counter()

    def elapsed_ms(self) -> float:
        now = time.perf_counter()
        if self._events is None or self._copied is None:
            return (now - self._start) * 1e3
        return self._events[0].elapsed_time(self._events[1]) + (now - self._copied) * 1e3


@dataclass
class _Attempt:
    """One scored attempt of the open block (0 = the candidate, i = the i-th regeneration)."""

    severity: float
    drift: torch.Tensor  # (B, N) per-token drift against the reference, on the scoring device
    scores: list[float]  # the detector's scores of the unstable set, in the order of its positions


@dataclass
class _Open:
    """The block being decided, from `judge` to `settle`."""

    record: BlockRecord
    # (B, N, D) summary of the previous accepted block; None for the first block
    reference: torch.Tensor | None
    attempts: list[_Attempt]
    threshold: float | None = None
    waiting: bool = False  # a prune verdict waits for its regeneration
    kept: int = 0  # the attempt the last verdict keeps
    feed: str = "none"  # what `settle` adds to the statistics: "kept", "candidate" or "none"
    counts: bool = False  # a block with a drift value that counts toward the warm-up


class TokenTrimController:
    """TokenTrim for any block loop: the decisions of the module docstring through three calls per block.

        decision = controller.judge(previous, candidate)   # previous: the last accepted block (None: the first)
        while decision.prune:                              # remove decision.positions from the cached frames,
            ...                                            # regenerate the block once (R = 1) ...
            decision = controller.regenerated(candidate, tokens_removed=...)
        controller.settle()                                # ... then the block is accepted

    Blocks are latents [B, F, C, H, W]; `previous` and `candidate` may differ in F. The verdicts are
    `Verdict`s (positions: spatial token indices n = h * grid_w + w, a host long tensor), the decisions
    `BlockRecord`s (`records`, the decision log's rows). The built-in loops reach the same object through the
    `TokenTrim` hook. `detector` replaces the paper's scoring rule (`PaperRule`, built from the config).

    patch: the DiT patch (ph, pw); the token grid it defines must be the KV cache's spatial grid.
    """

    def __init__(
        self, config: TokenTrimConfig, patch: tuple[int, int], detector: Detector | None = None
    ) -> None:
        if len(patch) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in patch):
            raise ValueError(f"patch must be two ints >= 1, got {patch!r}")
        self.config = config
        self.patch = (patch[0], patch[1])
        self.detector = detector if detector is not None else make_detector(config)
        self.reset()

    def reset(self) -> None:
        """Forget the statistics, the open block and the records (start a new video)."""
        self.detector.reset()
        self._drift_blocks = 0  # accepted blocks that had a drift value (the warm-up counts them)
        self._open: _Open | None = None
        self._records: list[BlockRecord] = []
        self._switched = False  # a prompt switch happened before the next block

    @property
    def records(self) -> list[BlockRecord]:
        return list(self._records)

    @property
    def pending(self) -> BlockRecord | None:
        """The record of the block judged but not settled yet (None between blocks)."""
        return None if self._open is None else self._open.record

    def _score(
        self, x0: torch.Tensor, reference: torch.Tensor | None
    ) -> tuple[_Attempt | None, torch.Tensor | None, float]:
        """Against the `reference` summary (None: nothing to compare with), a block's drift (Eq. 3–5), unstable
        set and severity (Eq. 6–7), and the scoring time in ms: (attempt, positions host long [k], ms).

        Everything is computed on x0's device; then one device-to-host copy brings D_t and the unstable set
        (`_decision_to_host`): the one host synchronisation a block's decision needs. On CUDA the time is the
        device time of the scoring kernels (events around them, read once that copy has synchronised) plus the
        host time after the copy; a host clock alone would also count the DiT work still queued before them.
        """
        timer = _ScoreTimer(x0.device)
        if reference is None:
            return None, None, timer.elapsed_ms()
        drift = token_drift(latent_summary(x0, self.patch), reference)
        indices, d_t, scores = self.detector.select(drift)
        timer.queued()
        severity, positions, scores = _decision_to_host(d_t, indices, scores)
        timer.copied()
        if not math.isfinite(severity):
            raise FloatingPointError(
                f"the candidate latents are not finite (drift severity {severity}): the model diverged. "
                "Check the checkpoint, or run in another dtype (bf16 / fp32)"
            )
        return _Attempt(severity, drift, scores), positions, timer.elapsed_ms()

    def judge(
        self,
        previous: torch.Tensor | None,
        candidate: torch.Tensor,
        *,
        block: int | None = None,
        frames: range | None = None,
    ) -> Verdict:
        """Judge a candidate block against the previous accepted one (see the module docstring).

        previous / candidate: latents [B, F, C, H, W]; previous None for the first block (nothing to compare
        with: recorded with severity None). block / frames: the record's block index and latent frames (default:
        the count of judged blocks, and F frames per block from there).
        """
        if self._open is not None:
            b = self._open.record.block
            if self._open.waiting:
                raise RuntimeError(
                    f"judge() while block {b} waits for its regeneration: call regenerated() first"
                )
            raise RuntimeError(
                f"judge() before block {b} was settled: call settle() once a block is accepted"
            )
        cfg = self.config
        if block is None:
            block = len(self._records)
        if frames is None:
            frames = range(block * candidate.shape[1], (block + 1) * candidate.shape[1])
        reference = None if previous is None else latent_summary(previous, self.patch)  # Z_{t-1}
        attempt, positions, ms = self._score(candidate, reference)
        mean, std = self.detector.statistics()
        severity = None if attempt is None else attempt.severity
        record = BlockRecord(
            int(block),
            (frames.start, frames.stop),
            severity=severity,
            mean=mean,
            std=std,
            score_ms=ms,
            prompt_switch=self._switched,
        )
        if attempt is not None:
            record.unstable, record.scores = positions.tolist(), attempt.scores
        self._records.append(record)
        opened = _Open(record, reference, [] if attempt is None else [attempt])
        self._open = opened
        switch, self._switched = self._switched, False
        if attempt is None:  # the first block: nothing to compare with
            record.action = "off" if not cfg.enabled else "warmup"
            return Verdict(prune=False)
        if switch and cfg.switch_exempt and cfg.enabled:  # a legitimate change: the new reference
            record.action = "switch"
            return Verdict(prune=False)
        opened.feed, opened.counts = "kept", True
        if not cfg.enabled:  # scored and recorded only
            return Verdict(prune=False)
        if self._drift_blocks < cfg.warmup or not self.detector.armed:
            record.action = "warmup"
            return Verdict(prune=False)
        opened.threshold = record.threshold = self.detector.threshold()
        record.triggered = severity > opened.threshold
        if record.triggered and cfg.max_regen > 0:
            record.action = "prune"
            record.pruned_positions = positions.tolist()
            opened.waiting = True
            opened.feed = {"regenerated": "kept", "candidate": "candidate", "skip": "none"}[
                cfg.stats_after_regen
            ]
            return Verdict(prune=True, positions=positions)
        record.action = "accept"
        return Verdict(prune=False)

    def regenerated(self, candidate: torch.Tensor, tokens_removed: int = 0) -> Verdict:
        """Judge the block regenerated after a prune verdict, against the same previous block.

        tokens_removed: cache tokens removed per layer for this regeneration (recorded). Returns prune=True only
        while the regeneration is still above the threshold and fewer than `max_regen` were made; otherwise the
        verdict's `keep` names the attempt to accept (`accept`: the last one, or the lowest severity).
        """
        opened = self._open
        if opened is None or not opened.waiting:
            raise RuntimeError("regenerated() called but no block is waiting for a regeneration")
        record = opened.record
        attempt, positions, ms = self._score(candidate, opened.reference)
        record.score_ms += ms
        record.tokens_removed += int(tokens_removed)
        record.regenerations += 1
        record.regenerated_severity = attempt.severity
        opened.attempts.append(attempt)
        if attempt.severity > opened.threshold and record.regenerations < self.config.max_regen:
            record.pruned_positions = sorted(set(record.pruned_positions) | set(positions.tolist()))
            return Verdict(prune=True, positions=positions)
        kept = record.regenerations
        if self.config.accept == "lower":  # the lowest severity; the later attempt on a tie
            kept = min(range(len(opened.attempts)), key=lambda i: (opened.attempts[i].severity, -i))
        record.kept = opened.kept = kept
        opened.waiting = False
        return Verdict(prune=False, keep=kept)

    def settle(self, kept: int | None = None) -> BlockRecord:
        """The loop accepted the judged block: its severity enters the statistics (`stats_after_regen`) and the
        warm-up count, and the record is final. kept: the attempt the loop committed (default: the verdict's).
        Returns the block's record."""
        opened = self._open
        if opened is None:
            raise RuntimeError("settle() called but no block was judged")
        record = opened.record
        if opened.waiting:
            raise RuntimeError(
                f"block {record.block} was judged for pruning: regenerate it and call regenerated() before "
                "settle() (max_regen=0 detects without regenerating)"
            )
        if kept is not None:
            if not 0 <= kept <= record.regenerations:
                raise ValueError(f"kept must name an attempt 0..{record.regenerations}, got {kept}")
            record.kept = opened.kept = kept
        fed = {"kept": opened.kept, "candidate": 0, "none": None}[opened.feed]
        if fed is not None:
            self.detector.update(opened.attempts[fed].severity, opened.attempts[fed].drift)
        self._drift_blocks += opened.counts
        self._open = None
        return record

    def switched(self) -> None:
        """The prompt changes before the next block (the loop re-caches under the new prompt)."""
        if self._open is not None:
            raise RuntimeError(f"a prompt switch while block {self._open.record.block} is open")
        self._switched = True
        if self.config.switch_stats == "reset":
            self.detector.reset()
            self._drift_blocks = 0


class TokenTrim:
    """The BlockHook the built-in loops call: their calls mapped onto one `TokenTrimController` (the same
    decisions any other loop gets from it). One instance per video (or call `reset`).

    The hook keeps a copy of the accepted block as the next block's `previous`: a loop may overwrite the
    latents it showed (Rolling Forcing regenerates in place), and the reference must be the attempt as judged.
    """

    def __init__(self, config: TokenTrimConfig, patch: tuple[int, int]) -> None:
        self.controller = TokenTrimController(config, patch)
        self._previous: torch.Tensor | None = None  # the accepted attempt, as judged
        self._attempts: list[torch.Tensor] = []  # the open block's attempts, as judged

    @property
    def config(self) -> TokenTrimConfig:
        return self.controller.config

    @property
    def patch(self) -> tuple[int, int]:
        return self.controller.patch

    @property
    def stats(self) -> RunningStats:
        """The accepted severities (the paper's detector)."""
        return self.controller.detector.stats

    @property
    def records(self) -> list[BlockRecord]:
        return self.controller.records

    def reset(self) -> None:
        """Forget the previous block, the statistics and the records (start a new video)."""
        self.controller.reset()
        self._previous, self._attempts = None, []

    def _settle(self, kept: int) -> None:
        self.controller.settle(kept)
        self._previous, self._attempts = self._attempts[kept], []

    def propose(self, block: int, frames: range, x0: torch.Tensor) -> Verdict:
        """Judge the candidate block x0 [B, F_block, C, H, W] (`TokenTrimController.judge`)."""
        verdict = self.controller.judge(self._previous, x0, block=block, frames=frames)
        self._attempts = [x0.detach().clone()]
        if not verdict.prune:
            self._settle(0)
        return verdict

    def regenerated(self, block: int, x0: torch.Tensor, tokens_removed: int, regenerations: int) -> Verdict:
        """Judge the regenerated block against the same previous block (`TokenTrimController.regenerated`)."""
        record = self.controller.pending
        if record is not None:
            assert block == record.block, f"regenerated(block={block}) but block {record.block} is pending"
            assert regenerations == record.regenerations + 1, (
                f"regenerations={regenerations}, expected {record.regenerations + 1}"
            )
        verdict = self.controller.regenerated(x0, tokens_removed)
        self._attempts.append(x0.detach().clone())
        if not verdict.prune:
            self._settle(verdict.keep)
        return verdict

    def accepted(self, block: int, x0: torch.Tensor) -> torch.Tensor:
        """The committed latents of the block just settled become the next block's reference (they equal the
        kept attempt unless an experiment changed them: an injected fault is judged by what follows it)."""
        self._previous = x0.detach().clone()
        return x0

    def switched(self, block: int) -> None:
        """The prompt changes before `block` (the pipeline re-caches under the new prompt)."""
        self.controller.switched()
