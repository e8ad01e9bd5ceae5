"""The TokenTrim controller: drift-triggered KV-cache pruning with one regeneration (paper Sec. 4, Algorithm 1).

Decision rule, block by block (block = one AR chunk; indices count from 0):
1. Block 0 has no previous block: action "warmup", severity None; its summary becomes Z_prev.
2. The first `warmup` blocks that have a drift value (blocks 1..warmup) are accepted as "warmup"; their
   severity D_t enters the statistics. A block is also accepted as "warmup" while no value has been accepted.
3. Later blocks: "prune" if D_t > mu + lam·sigma (strict, Eq. 8), else "accept" and D_t enters the statistics.
4. After a prune the pipeline regenerates the block and calls `regenerated`. The regenerated block's severity
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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .drift import latent_summary, token_drift, unstable_set
from .hook import BlockRecord, Verdict
from .stats import RunningStats

STATS_AFTER_REGEN = ("regenerated", "candidate", "skip")
REGEN_NOISE = ("same", "fresh")
ACCEPT = ("regenerated", "lower")


@dataclass(frozen=True)
class TokenTrimConfig:
    """TokenTrim settings; defaults are the paper's (p = 0.1, lambda = 2, T_warm = 2, R = 1).

    regen_noise is read by the pipelines: "same" regenerates a pruned block from the noise of its first
    attempt, "fresh" draws new noise. The controller itself does not use it.

    At a prompt switch (an addition of this project; docs/longlive.md): switch_exempt makes the first block after
    the switch a new reference (action "switch": scored, never pruned, not in the statistics); switch_stats
    "reset" starts the statistics and the warm-up again, "keep" keeps them; switch_pruning is read by the
    pipelines: "keep" re-applies the removed positions to the rows a re-cache rebuilds (and masks them inside
    it), "reset" lets the re-cache rebuild whole frames.
    """

    enabled: bool = True
    p: float = 0.1
    lam: float = 2.0
    warmup: int = 2
    max_regen: int = 1
    stats_after_regen: str = "regenerated"
    regen_noise: str = "same"
    min_std: float = 0.0
    accept: str = "regenerated"
    switch_exempt: bool = True
    switch_stats: str = "reset"
    switch_pruning: str = "keep"

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, int | float) or not 0.0 < self.p < 1.0:
            raise ValueError(f"p must be a number with 0 < p < 1, got {self.p!r}")
        if (
            isinstance(self.lam, bool)
            or not isinstance(self.lam, int | float)
            or not 0.0 <= self.lam < math.inf
        ):
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam!r}")
        for name in ("warmup", "max_regen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.stats_after_regen not in STATS_AFTER_REGEN:
            raise ValueError(
                f"stats_after_regen must be one of {STATS_AFTER_REGEN}, got {self.stats_after_regen!r}"
            )
        if self.regen_noise not in REGEN_NOISE:
            raise ValueError(f"regen_noise must be one of {REGEN_NOISE}, got {self.regen_noise!r}")
        if self.accept not in ACCEPT:
            raise ValueError(f"accept must be one of {ACCEPT}, got {self.accept!r}")
        if not isinstance(self.switch_exempt, bool):
            raise ValueError(f"switch_exempt must be a bool, got {self.switch_exempt!r}")
        for name in ("switch_stats", "switch_pruning"):
            if getattr(self, name) not in ("keep", "reset"):
                raise ValueError(f"{name} must be 'keep' or 'reset', got {getattr(self, name)!r}")
        if (
            isinstance(self.min_std, bool)
            or not isinstance(self.min_std, int | float)
            or not 0.0 <= self.min_std < math.inf
        ):
            raise ValueError(f"min_std must be a finite number >= 0, got {self.min_std!r}")


def _decision_to_host(severity: torch.Tensor, indices: torch.Tensor) -> tuple[float, torch.Tensor]:
    """D_t (float32 0-dim) and the unstable set (long [k]) in one device-to-host copy, packed as float64 [1 + k]:
    float64 holds every float32 and every index below 2^53 exactly, so the values equal two separate reads.
    Returns (D_t as a Python float, the indices as a host long [k])."""
    packed = torch.cat([severity.reshape(1).double(), indices.double()]).cpu()
    return float(packed[0]), packed[1:].long()


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
class _Pending:
    """A pruned block waiting for its regeneration."""

    record: BlockRecord
    severity: float
    threshold: float
    attempts: list[tuple[float, torch.Tensor]]  # (severity, summary) of the candidate and each regeneration


class TokenTrim:
    """BlockHook implementing TokenTrim. One instance per video (or call `reset`).

    patch: the DiT patch (ph, pw); the token grid it defines must be the KV cache's spatial grid.
    """

    def __init__(self, config: TokenTrimConfig, patch: tuple[int, int]) -> None:
        if len(patch) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in patch):
            raise ValueError(f"patch must be two ints >= 1, got {patch!r}")
        self.config = config
        self.patch = (patch[0], patch[1])
        self.stats = RunningStats(min_std=config.min_std)
        self.reset()

    def reset(self) -> None:
        """Forget the previous block, the statistics and the records (start a new video)."""
        self.stats.reset()
        self._z_prev: torch.Tensor | None = None  # (B, N, D) summary of the last accepted block
        self._drift_blocks = 0  # blocks seen that had a drift value
        self._pending: _Pending | None = None
        self._records: list[BlockRecord] = []
        self._switched = False  # a prompt switch happened before the next block

    @property
    def records(self) -> list[BlockRecord]:
        return list(self._records)

    def _score(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, float | None, float]:
        """Summary, unstable set (host long [k]) and severity of a candidate (Eq. 3–7), and the scoring time in ms.

        Everything is computed on x0's device; then one device-to-host copy brings D_t and the unstable set
        (`_decision_to_host`): the one host synchronisation a block's decision needs. On CUDA the time is the
        device time of the scoring kernels (events around them, read once that copy has synchronised) plus the
        host time after the copy; a host clock alone would also count the DiT work still queued before them.
        """
        timer = _ScoreTimer(x0.device)
        z = latent_summary(x0, self.patch)
        positions, severity = None, None
        if self._z_prev is not None:
            indices, d_t = unstable_set(token_drift(z, self._z_prev), self.config.p)
            timer.queued()
            severity, positions = _decision_to_host(d_t, indices)
            timer.copied()
            if not math.isfinite(severity):
                raise FloatingPointError(
                    f"the candidate latents are not finite (drift severity {severity}): the model diverged. "
                    "Check the checkpoint, or run in another dtype (bf16 / fp32)"
                )
        return z, positions, severity, timer.elapsed_ms()

    def _stats_snapshot(self) -> tuple[float | None, float | None]:
        if self.stats.count == 0:
            return None, None
        return self.stats.mean, self.stats.std

    def propose(self, block: int, frames: range, x0: torch.Tensor) -> Verdict:
        """Judge the candidate block (see the module docstring). x0 [B, F_block, C, H, W]."""
        assert self._pending is None, (
            f"propose(block={block}) while block {self._pending.record.block} is pending"
        )
        cfg = self.config
        z, positions, severity, ms = self._score(x0)
        mean, std = self._stats_snapshot()
        record = BlockRecord(int(block), (frames.start, frames.stop), severity=severity, mean=mean, std=std,
                             score_ms=ms, prompt_switch=self._switched)  # fmt: skip
        self._records.append(record)
        switch, self._switched = self._switched, False
        if severity is None:  # block 0: nothing to compare with
            record.action = "off" if not cfg.enabled else "warmup"
        elif switch and cfg.switch_exempt and cfg.enabled:  # a legitimate change: the new reference
            record.action = "switch"
        elif not cfg.enabled:
            self.stats.update(severity)
        elif self._drift_blocks < cfg.warmup or self.stats.count == 0:
            record.action = "warmup"
            self.stats.update(severity)
        else:
            threshold = self.stats.threshold(cfg.lam)
            record.threshold = threshold
            record.triggered = severity > threshold
            if record.triggered and cfg.max_regen > 0:
                record.action = "prune"
                record.pruned_positions = positions.tolist()
                self._pending = _Pending(record, severity, threshold, [(severity, z)])
                return Verdict(prune=True, positions=positions)
            record.action = "accept"
            self.stats.update(severity)
        if severity is not None and record.action != "switch":
            self._drift_blocks += 1
        self._z_prev = z
        return Verdict(prune=False)

    def switched(self, block: int) -> None:
        """The prompt changes before `block` (the pipeline re-caches under the new prompt)."""
        assert self._pending is None, "a prompt switch while a block is pending"
        self._switched = True
        if self.config.switch_stats == "reset":
            self.stats.reset()
            self._drift_blocks = 0

    def regenerated(self, block: int, x0: torch.Tensor, tokens_removed: int, regenerations: int) -> Verdict:
        """Judge the regenerated block against the same Z_prev; accept it unless another round is allowed."""
        pending = self._pending
        if pending is None:
            raise RuntimeError(
                f"regenerated(block={block}) called but no block is waiting for a regeneration"
            )
        record = pending.record
        assert block == record.block, f"regenerated(block={block}) but block {record.block} is pending"
        assert regenerations == record.regenerations + 1, (
            f"regenerations={regenerations}, expected {record.regenerations + 1}"
        )
        z, positions, severity, ms = self._score(x0)
        record.score_ms += ms
        record.tokens_removed += int(tokens_removed)
        record.regenerations = regenerations
        record.regenerated_severity = severity
        pending.attempts.append((severity, z))
        if severity > pending.threshold and regenerations < self.config.max_regen:
            record.pruned_positions = sorted(set(record.pruned_positions) | set(positions.tolist()))
            return Verdict(prune=True, positions=positions)
        kept = regenerations
        if self.config.accept == "lower":  # the lowest severity; the later attempt on a tie
            kept = min(range(len(pending.attempts)), key=lambda i: (pending.attempts[i][0], -i))
        record.kept = kept
        mode = self.config.stats_after_regen
        if mode == "regenerated":
            self.stats.update(pending.attempts[kept][0])
        elif mode == "candidate":
            self.stats.update(pending.severity)
        self._drift_blocks += 1
        self._z_prev = pending.attempts[kept][1]
        self._pending = None
        return Verdict(prune=False, keep=kept)
