"""The GPU check's report: steps run under time budgets, their figures kept in `gpu_check.json` and
`gpu_check.md`, both rewritten after every step and whenever a step reports progress.

A step is a function filling a `dict` of figures. It runs under its own time budget, cut to what is left of the
whole check's, so a slow step cannot eat the slot: when the budget runs out, SIGALRM interrupts it (at the next
Python bytecode; on a GPU that is at the latest the next synchronisation, once per block) and what it had
measured stays in the report. An error is recorded with the step and the next step runs. SIGTERM (the shell
script's overall `timeout`) ends the current step the same way and stops the check.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokentrim.files import write_json, write_text

# Not worth starting a step with less than this left of the whole check.
MIN_STEP_S = 5.0


class StepTimeout(Exception):
    """A step ran out of its time budget."""


class CheckStopped(BaseException):
    """SIGTERM: the check's overall time limit; not caught by a step's `except Exception`."""


class Skip(Exception):
    """A step that does not apply here (say, flash-attn not installed); the message says why."""


def lookup(steps: dict, path: tuple[str, ...]) -> float | None:
    """The number at `path` = (step, key, key, ...) in the steps' figures; None if it is not there (yet)."""
    node = steps.get(path[0], {}).get("figures", {})
    for key in path[1:]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, int | float) and not isinstance(node, bool) else None


@dataclass(frozen=True)
class Figure:
    """A headline figure read from a step (`path` as in `lookup`), with its goal if it has one."""

    name: str
    path: tuple[str, ...]
    unit: str = ""
    op: str | None = None  # "<=", ">=", "<"
    goal: float | None = None

    def row(self, steps: dict, judge: bool) -> dict:
        """{figure, value, unit, goal, met, step_status}; `met` None if not judged or not measured."""
        value = lookup(steps, self.path)
        met = None
        if judge and self.op is not None and value is not None and math.isfinite(value):
            met = {"<=": value <= self.goal, ">=": value >= self.goal, "<": value < self.goal}[self.op]
        goal = None if self.op is None else f"{self.op} {self.goal:g}{self.unit}"
        return {
            "figure": self.name,
            "value": value,
            "unit": self.unit,
            "goal": goal,
            "met": met,
            "step_status": steps.get(self.path[0], {}).get("status"),
        }


def json_safe(node):
    """NaN and infinities as strings ("nan", "inf"): JSON has no form for them."""
    if isinstance(node, dict):
        return {k: json_safe(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [json_safe(v) for v in node]
    return str(node) if isinstance(node, float) and not math.isfinite(node) else node


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise StepTimeout in the main thread after `seconds`."""

    def expire(signum, frame):
        raise StepTimeout(f"ran past its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _stop(signum, frame):
    raise CheckStopped("stopped by SIGTERM (the check's overall time limit)")


class Report:
    """Steps and their figures; `save` writes `gpu_check.json` and `gpu_check.md` into `out_dir`."""

    def __init__(self, out_dir: Path, header: dict, figures: tuple[Figure, ...], total_s: float):
        self.out_dir = Path(out_dir)
        self.figures = figures
        self.deadline = time.monotonic() + total_s
        self.started = time.monotonic()
        self.data = {**header, "total_budget_s": total_s, "wall_s": 0.0, "figures": [], "steps": {}}
        self.stopped = False
        self._sigterm = signal.signal(signal.SIGTERM, _stop)

    def close(self) -> None:
        """Final save; SIGTERM back to what it was."""
        self.save()
        signal.signal(signal.SIGTERM, self._sigterm)

    @property
    def steps(self) -> dict:
        return self.data["steps"]

    def run(self, name: str, step: Callable[[dict], None], budget_s: float) -> dict:
        """Run one step within min(budget_s, what is left of the check); returns its record."""
        left = self.deadline - time.monotonic()
        record = {
            "status": "running",
            "budget_s": round(min(budget_s, left), 1),
            "wall_s": 0.0,
            "figures": {},
        }
        self.steps[name] = record
        if self.stopped or left < MIN_STEP_S:
            record.update(status="skipped", reason="the check's time budget is spent")
            self.save()
            return record
        self.save()
        print(f"[gpu_check] {name} (budget {record['budget_s']:.0f} s)", flush=True)
        start = time.monotonic()
        try:
            with time_limit(record["budget_s"]):
                step(record["figures"])
            record["status"] = "ok"
        except Skip as why:
            record.update(status="skipped", reason=str(why))
        except StepTimeout as why:
            record.update(status="timed_out", error=str(why))
        except CheckStopped as why:
            record.update(status="stopped", error=str(why))
            self.stopped = True
        except Exception as err:  # recorded; the next step runs
            record.update(
                status="failed",
                error=f"{type(err).__name__}: {err}",
                traceback=traceback.format_exc(limit=-4).splitlines()[-12:],
            )
        record["wall_s"] = round(time.monotonic() - start, 2)
        why = f": {record.get('error') or record.get('reason')}" if record["status"] != "ok" else ""
        print(f"[gpu_check] {name}: {record['status']} in {record['wall_s']:.1f} s{why}", flush=True)
        self.save()
        return record

    def save(self) -> None:
        """Rewrite both files from the current figures (atomically: a kill leaves the previous version)."""
        self.data["wall_s"] = round(time.monotonic() - self.started, 2)
        judge = not self.data.get("dry_run")  # a dry run's numbers say nothing about a GPU
        self.data["figures"] = [f.row(self.steps, judge) for f in self.figures]
        data = json_safe(self.data)
        write_json(self.out_dir / "gpu_check.json", data)
        write_text(self.out_dir / "gpu_check.md", markdown(data))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _bullets(figures: dict, indent: str = "") -> list[str]:
    """Nested figures as nested bullets (lists of numbers inline)."""
    lines = []
    for key, value in figures.items():
        if isinstance(value, dict):
            lines.append(f"{indent}- {key}:")
            lines += _bullets(value, indent + "  ")
        else:
            lines.append(f"{indent}- {key}: {_fmt(value)}")
    return lines


def markdown(data: dict) -> str:
    """The report as markdown: what ran where, the headline figures and goals, then every step's figures."""
    lines = [f"# GPU check{' (dry run: CPU, tiny preset; not a GPU measurement)' if data.get('dry_run') else ''}",
             "", f"{data.get('summary', '')}", "",
             f"Wall time {data['wall_s']:.1f} s of a {data['total_budget_s']:.0f} s budget.", "",
             "| figure | measured | goal | met |", "|---|---|---|---|"]  # fmt: skip
    for f in data["figures"]:
        # —: no goal, not judged or measured
        met = "—" if f["met"] is None else ("yes" if f["met"] else "**no**")
        value = "not measured" if f["value"] is None else f"{_fmt(f['value'])}{f['unit']}"
        if f["value"] is not None and f["step_status"] != "ok":
            value += f" (step {f['step_status']})"
        lines.append(f"| {f['figure']} | {value} | {f['goal'] or ''} | {met} |")
    lines += ["", "| step | status | wall s | budget s |", "|---|---|---|---|"]
    for name, step in data["steps"].items():
        lines.append(f"| {name} | {step['status']} | {step['wall_s']:.1f} | {step['budget_s']:.0f} |")
    for name, step in data["steps"].items():
        lines += ["", f"## {name}: {step['status']}", ""]
        for key in ("reason", "error"):
            if key in step:
                lines.append(f"{key}: {step[key]}")
        lines += _bullets(step["figures"])
    return "\n".join(lines) + "\n"
