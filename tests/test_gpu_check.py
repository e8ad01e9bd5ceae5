"""The GPU check (scripts/gpu_check.sh): its dry run end to end on the CPU, the guarded steps of its report, the
report's rendering, the sync counting, and its answers to bad usage."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from tokentrim.wan import get_preset
from tools.gpu_check.check import FIGURES, GPU
from tools.gpu_check.host_syncs import count_syncs, cuda_syncs, sync_sites
from tools.gpu_check.report import Figure, Report, Skip, json_safe, lookup, markdown

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["environment", "correctness", "host_syncs", "model", "speed_self_forcing", "speed_rolling_forcing",
         "memory", "static_cache", "attention_flash", "compile", "flowmo", "memory_int8"]  # fmt: skip


@pytest.fixture(autouse=True)
def sigterm_restored():
    """A `Report` left open keeps its SIGTERM handler: put the previous one back after each test."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def numbers(node, path=""):
    """(path, number) for every number in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from numbers(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from numbers(v, f"{path}/{i}")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield path, node


def script(*args, env=None, cwd=None):
    """The script under this interpreter (`PYTHON`: it would otherwise pick .venv/bin/python or python3)."""
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd)


# The dry run, end to end ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dry_run_writes_every_step_with_finite_figures(tmp_path):
    out = tmp_path / "check"
    proc = script("--dry-run", str(out), cwd=tmp_path)  # from another folder: the script finds the project
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["compile_bench.json", "gpu_check.json", "gpu_check.md"]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["dry_run"] is True
    assert list(data["steps"]) == STEPS
    status = {name: step["status"] for name, step in data["steps"].items()}
    int8 = "ok" if importlib.util.find_spec("torchao") else "skipped"  # the quant extra
    assert status == {**dict.fromkeys(STEPS, "ok"), "attention_flash": "skipped", "memory_int8": int8}
    bad = [(p, v) for p, v in numbers(data) if not math.isfinite(v)]
    assert not bad
    fig = {name: step["figures"] for name, step in data["steps"].items()}
    for pipeline in ("self_forcing", "rolling_forcing"):
        row = fig["correctness"][pipeline]
        assert row["max_abs_diff"] == 0 and row["decisions_equal"] and row["prunes"] >= 1  # CPU against CPU
        assert row["bf16_finite"] is True
        assert row["max_abs_diff_static"] < 1e-5 and row["decisions_equal_static"]  # static (CPU) vs dynamic
        speed = fig[f"speed_{pipeline}"]
        assert set(speed["configs"]) == {"baseline", "tokentrim", "tokentrim_flowmo"}
        assert (
            speed["baseline_fps"] > 0 and speed["tokentrim_overhead"] > 0 and 0 < speed["scoring_share"] < 1
        )
        # the VAE's decoding timed apart: end to end is slower than the loop alone
        assert 0 < speed["baseline_end_to_end_fps"] < speed["baseline_fps"] and speed["baseline_decode_s"] > 0
        assert speed["baseline_first_block_latency_ms"] > 0
        assert fig["host_syncs"][pipeline]["observed"] is False  # CUDA's sync debug mode needs CUDA
        assert fig["flowmo"][pipeline]["every_block_ratio"] > 0
    assert fig["correctness"]["passed"] is True
    frames = fig["memory"]["latent_frames"]
    assert fig["memory"]["decoded_frames"] == 1 + 4 * (frames - 1)  # the Wan VAE's frame count
    assert fig["memory"]["blocks_decoded"] == frames // get_preset("tiny").frames_per_block
    assert fig["compile"]["compiled_graphs"] >= 1 and fig["compile"]["speedup"] > 0
    assert fig["compile"]["eager_wall_s"] > 0 and fig["compile"]["cache"] == "static"
    assert fig["static_cache"]["static_fps"] > 0 and fig["static_cache"]["static_over_dynamic"] > 0
    if int8 == "ok":
        assert fig["memory_int8"]["dit_weights_gib"] < fig["memory_int8"]["dit_weights_gib_bf16"]
        assert fig["memory_int8"]["decoded_frames"] == fig["memory"]["decoded_frames"]
    assert [f["figure"] for f in data["figures"]] == [f.name for f in FIGURES]
    assert all(f["met"] is None for f in data["figures"])  # a dry run judges no goal
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (dry run")
    for name in STEPS:
        assert f"## {name}: {status[name]}" in md


# Guarded steps ----------------------------------------------------------------------------------------------------
def saved(out: Path) -> dict:
    return json.loads((out / "gpu_check.json").read_text())


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    report = Report(tmp_path, {"dry_run": False}, (), total_s=60)
    seen_while_running = {}

    def fails(fig):
        fig["before"] = 1.5
        report.save()  # progress reaches the disk while the step runs
        seen_while_running.update(saved(tmp_path)["steps"]["fails"])
        raise ZeroDivisionError("boom")

    def skips(fig):
        raise Skip("not here")

    report.run("fails", fails, 10)
    report.run("skips", skips, 10)
    report.run("works", lambda fig: fig.update(value=2), 10)
    report.close()
    assert seen_while_running["status"] == "running" and seen_while_running["figures"] == {"before": 1.5}
    steps = saved(tmp_path)["steps"]
    assert list(steps) == ["fails", "skips", "works"]
    assert steps["fails"]["status"] == "failed" and steps["fails"]["error"] == "ZeroDivisionError: boom"
    assert steps["fails"]["figures"] == {"before": 1.5}
    assert steps["skips"]["status"] == "skipped" and steps["skips"]["reason"] == "not here"
    assert steps["works"] == {**steps["works"], "status": "ok", "figures": {"value": 2}}
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## fails: failed" in md and "error: ZeroDivisionError: boom" in md and "## works: ok" in md


def test_a_step_past_its_budget_is_stopped_and_keeps_its_figures(tmp_path):
    report = Report(tmp_path, {}, (), total_s=60)

    def slow(fig):
        fig["rounds"] = 0
        while True:
            fig["rounds"] += 1
            time.sleep(0.05)

    start = time.monotonic()
    report.run("slow", slow, 0.3)
    report.run("after", lambda fig: fig.update(ran=True), 10)
    assert time.monotonic() - start < 5
    steps = saved(tmp_path)["steps"]
    assert steps["slow"]["status"] == "timed_out" and steps["slow"]["figures"]["rounds"] >= 1
    assert steps["after"]["status"] == "ok"


def test_steps_past_the_total_budget_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr("tools.gpu_check.report.MIN_STEP_S", 0.2)  # the least a step may start with
    report = Report(tmp_path, {}, (), total_s=0.5)
    report.run("first", lambda fig: time.sleep(0.6), 10)
    report.run("second", lambda fig: fig.update(ran=True), 10)
    steps = saved(tmp_path)["steps"]
    assert steps["first"]["status"] == "timed_out"  # its budget was cut to what was left: 0.5 s
    assert steps["second"]["status"] == "skipped" and steps["second"]["figures"] == {}


# Report contents --------------------------------------------------------------------------------------------------
STEPS_DATA = {
    "speed": {
        "status": "ok",
        "wall_s": 2.0,
        "budget_s": 100,
        "figures": {"fps": 30.0, "nested": {"ratio": 1.1, "flag": True}},
    },
    "memory": {"status": "timed_out", "wall_s": 1.0, "budget_s": 90, "figures": {"peak": 25.5}},
}


def test_lookup_reads_numbers_only():
    assert lookup(STEPS_DATA, ("speed", "fps")) == 30.0
    assert lookup(STEPS_DATA, ("speed", "nested", "ratio")) == 1.1
    assert lookup(STEPS_DATA, ("speed", "nested", "flag")) is None  # a bool is not a figure
    assert lookup(STEPS_DATA, ("speed", "nested", "ratio", "deeper")) is None
    assert lookup(STEPS_DATA, ("absent", "fps")) is None


@pytest.mark.parametrize(
    ("op", "goal", "met"),
    [(">=", 30, True), (">=", 31, False), ("<=", 30, True), ("<", 30, False), ("<", 31, True)],
)
def test_figure_goals(op, goal, met):
    row = Figure("fps", ("speed", "fps"), "", op, goal).row(STEPS_DATA, judge=True)
    assert row["met"] is met and row["goal"] == f"{op} {goal}"
    assert Figure("fps", ("speed", "fps"), "", op, goal).row(STEPS_DATA, judge=False)["met"] is None


def test_figures_without_goal_or_value_are_not_judged():
    assert Figure("fps", ("speed", "fps")).row(STEPS_DATA, judge=True) == {
        "figure": "fps", "value": 30.0, "unit": "", "goal": None, "met": None, "step_status": "ok"}  # fmt: skip
    assert Figure("x", ("speed", "missing"), "", "<", 1).row(STEPS_DATA, judge=True)["met"] is None
    nan = {"s": {"status": "ok", "figures": {"v": float("nan")}}}
    assert Figure("v", ("s", "v"), "", "<", 1).row(nan, judge=True)["met"] is None


def test_json_safe_spells_out_non_finite_numbers():
    data = {"a": [1.0, float("nan")], "b": {"c": float("inf"), "d": -float("inf")}, "e": "x", "f": 3}
    assert json_safe(data) == {"a": [1.0, "nan"], "b": {"c": "inf", "d": "-inf"}, "e": "x", "f": 3}
    json.dumps(json_safe(data), allow_nan=False)


def test_markdown_rendering():
    data = {"dry_run": False, "summary": "sum", "wall_s": 12.34, "total_budget_s": 450, "steps": STEPS_DATA,
            "figures": [Figure("fps", ("speed", "fps"), "", ">=", 25).row(STEPS_DATA, True),
                        Figure("peak", ("memory", "peak"), " GiB", "<=", 24).row(STEPS_DATA, True),
                        Figure("flash", ("flash", "fps")).row(STEPS_DATA, True)]}  # fmt: skip
    md = markdown(data)
    assert md.splitlines()[0] == "# GPU check"
    assert "Wall time 12.3 s of a 450 s budget." in md
    assert "| fps | 30 | >= 25 | yes |" in md
    assert "| peak | 25.5 GiB (step timed_out) | <= 24 GiB | **no** |" in md
    assert "| flash | not measured |  | — |" in md
    assert "| memory | timed_out | 1.0 | 90 |" in md
    assert "## speed: ok\n\n- fps: 30\n- nested:\n  - ratio: 1.1\n  - flag: True\n" in md
    assert markdown({**data, "dry_run": True}).startswith("# GPU check (dry run")


# Host syncs -------------------------------------------------------------------------------------------------------
def test_count_syncs_by_kind_and_after_the_first_block():
    decision, output = "tokentrim_core.trim:_decision_to_host", "tokentrim.pipelines.common:finished"
    sites = [
        "tokentrim.wan.model:forward",
        output,
        decision,
        "mod:f",
        output,
        "mod:f",
        "tokentrim_core.flowmo:keep",
    ]
    counts = count_syncs(sites, first_block_end=2)
    assert counts["syncs"] == {"tokentrim.wan.model:forward": 1, output: 2, decision: 1, "mod:f": 2,
                               "tokentrim_core.flowmo:keep": 1}  # fmt: skip
    assert (counts["decision"], counts["output"], counts["flowmo"], counts["other"]) == (1, 2, 1, 3)
    assert counts["other_after_first_block"] == 2


def test_sync_sites_observe_nothing_off_cuda():
    with sync_sites(torch.device("cpu")) as sites:
        torch.ones(2).sum().item()
    assert sites is None


def _reads_once(t: torch.Tensor) -> float:
    return t.sum().item()


@pytest.mark.gpu
def test_sync_sites_name_the_function_that_synchronised():
    device = torch.device("cuda")
    t = torch.ones(4, device=device)
    with sync_sites(device) as sites:
        _reads_once(t)
    assert sites == [f"{__name__}:_reads_once"]


@pytest.mark.gpu
def test_cuda_syncs_of_the_tiny_preset_are_the_documented_ones():
    from tools.gpu_check.check import PRUNING, tiny_pipeline

    device = torch.device("cuda")
    pipe = tiny_pipeline("self_forcing", device, torch.float32, PRUNING)
    embeds = torch.randn(1, 16, pipe.backend.model.config.text_dim, device=device)
    found = cuda_syncs(pipe, embeds, 15, device)
    assert (
        found["observed"] and found["decision"] == found["judgements"] and found["output"] == found["blocks"]
    )
    assert found["other_after_first_block"] == 0, found["syncs"]


# The script -------------------------------------------------------------------------------------------------------
def test_header_states_the_gpu_budgets():
    rows = re.findall(r"^#   (\w+)\s+(\d+)\s+(\d+|rest)\b", SCRIPT.read_text(), flags=re.M)
    assert {name: float(budget) for name, budget, _ in rows} == GPU.budgets
    assert [name for name, _, _ in rows] == STEPS
    assert "Python part stops starting steps at 450 s" in SCRIPT.read_text() and GPU.total_s == 450


def test_requirements_are_the_dependencies_but_torch():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    proc = script("--requirements")
    assert proc.returncode == 0
    assert (
        proc.stdout.split() == [d for d in deps if not d.startswith("torch")] and "torch" not in proc.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "usage:"),
        (("--dry-run",), "usage:"),
        (("a", "b"), "usage:"),
        (("--dryrun",), "unknown option --dryrun"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(tmp_path, args, message):
    proc = script(*args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_an_outdir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep")
    proc = script("--dry-run", str(target))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "OUTDIR" in proc.stderr and "Traceback" not in proc.stderr
    assert target.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_the_gpu_run_without_cuda_says_so_and_writes_nothing(tmp_path):
    proc = script(str(tmp_path / "out"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "no CUDA device" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_python_without_the_dependencies_is_named(tmp_path):
    bare = tmp_path / "python"  # a Python that sees none of the installed packages
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    bare.chmod(0o755)
    proc = script("--dry-run", str(tmp_path / "out"), env={"PYTHON": str(bare)})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "lacks torch" in proc.stderr and not (tmp_path / "out").exists()
