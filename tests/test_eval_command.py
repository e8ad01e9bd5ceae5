"""`tokentrim eval` end to end on small synthetic mp4s (JSON fields, printed flags and categories, pair verdict
both ways round, user errors), and the VBench bridge: the converter on hand-made VBench result files with
hand-computed aggregates, and the shell script's wiring with a stand-in for `vbench evaluate`."""

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_eval_scenes import FPS, SECONDS, frozen, progressive_blur, reference

from tokentrim.cli import main
from tokentrim.eval import CATEGORIES, METRICS
from tokentrim.video import write_video

REPO = Path(__file__).resolve().parents[1]


def load_bridge():
    spec = importlib.util.spec_from_file_location("vbench_bridge", REPO / "scripts" / "vbench_bridge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """clean (the moving reference scene), blur (growing blur), still (its first frame held): H.264 mp4s."""
    folder = tmp_path_factory.mktemp("videos")
    paths = {name: folder / f"{name}.mp4" for name in ("clean", "blur", "still")}
    for name, make in (("clean", reference), ("blur", progressive_blur), ("still", frozen)):
        write_video(paths[name], make(), fps=FPS)
    return paths


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_videos_writes_json_with_curves_flags_and_timing(videos, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    code, stdout, _ = run(capsys, "eval", videos["clean"], videos["still"], "--json", out)
    assert code == 0 and str(out) in stdout
    assert "flags: none" in stdout and "flags: frozen" in stdout  # printed per video
    data = json.loads(out.read_text())
    assert data["metrics"] == [m.name for m in METRICS] and data["categories"] == list(CATEGORIES)
    clean, still = data["videos"]
    assert (clean["path"], still["path"]) == (str(videos["clean"]), str(videos["still"]))
    segments = SECONDS // 2
    for report in data["videos"]:
        assert (report["segments"], report["segment_frames"], report["frames"]) == (
            segments,
            32,
            SECONDS * FPS,
        )
        assert report["settings"]["frame_stride"] == 2 and report["settings"]["working_long_side"] == 256
        assert 0 < report["decode_seconds"] < report["eval_seconds"]
        assert set(report["metrics"]) == {m.name for m in METRICS}
        for entry in report["metrics"].values():
            assert len(entry["values"]) == len(entry["curve"]) == segments and entry["curve"][0] == 0.0
            assert entry["drift"] == pytest.approx(sum(entry["curve"][1:]) / (segments - 1))
            assert entry["max"] == max(entry["curve"][1:]) and entry["first_last"] == entry["curve"][-1]
    assert clean["flags"] == [] and still["flags"] == ["frozen"]
    assert still["guards"]["longest_still_s"] == SECONDS and still["guards"]["dynamic_degree"] == 0.0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_pair_verdict_prefers_clean_video_both_ways_round(videos, tmp_path, capsys):
    clean, blur = videos["clean"], videos["blur"]
    code, stdout, stderr = run(capsys, "eval", "--pair", blur, clean, "--json", tmp_path / "a.json")
    assert code == 0 and "verdict: treated" in stdout and "detail=treated" in stdout
    assert stderr == ""  # same scene, same first frames: no warnings
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["verdict"] == "treated" and a["flags"]["treated"] == [] and a["warnings"] == []
    assert [f for f in a["flags"]["baseline"] if f.startswith("increasingly less spatial information: ")]
    assert a["baseline"]["path"] == str(blur) and a["treated"]["path"] == str(clean)
    assert set(a["categories"]) == set(CATEGORIES) and "majority" in a["rule"]

    code, _, _ = run(capsys, "eval", "--pair", clean, blur, "--json", tmp_path / "b.json")
    b = json.loads((tmp_path / "b.json").read_text())
    assert code == 0 and b["verdict"] == "baseline"
    assert b["votes"] == {"baseline": a["votes"]["treated"], "treated": a["votes"]["baseline"],
                          "tie": a["votes"]["tie"]}  # fmt: skip
    flip = {"baseline": "treated", "treated": "baseline", "tie": "tie"}
    for name, c in a["comparison"].items():
        assert b["comparison"][name]["less_drift"] == flip[c["less_drift"]], name
        assert b["comparison"][name]["baseline_drift"] == c["treated_drift"]


def test_frozen_video_is_never_preferred_and_the_flag_is_printed(videos, tmp_path, capsys):
    code, stdout, _ = run(
        capsys, "eval", "--pair", videos["clean"], videos["still"], "--json", tmp_path / "f.json"
    )
    assert (
        code == 0
        and "treated frozen" in stdout
        and "verdict: baseline (treated is degenerate (frozen)" in stdout
    )
    data = json.loads((tmp_path / "f.json").read_text())
    assert data["verdict"] == "baseline" and data["flags"] == {"baseline": [], "treated": ["frozen"]}


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_user_errors_exit_2_with_one_line_and_no_json(videos, tmp_path, capsys):
    out = tmp_path / "x.json"
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    short = tmp_path / "short.mp4"
    write_video(short, reference()[:FPS], fps=FPS)  # 16 frames: two 2 s segments need 64
    cases = [
        (["eval", tmp_path / "missing.mp4", "--json", out], "not found"),
        (["eval", "--pair", videos["clean"], tmp_path / "missing.mp4", "--json", out], "not found"),
        (["eval", broken, "--json", out], "cannot read"),
        (["eval", "--pair", videos["clean"], short, "--json", out], "1.00 s (16 frames at 16 fps)"),
        (["eval", "--json", out], "exactly one of"),
        (
            ["eval", videos["clean"], "--pair", videos["clean"], videos["blur"], "--json", out],
            "exactly one of",
        ),
        (["eval", videos["clean"], "--json", out, "--frame-stride", "0"], "frame_stride"),
        (["eval", videos["clean"], "--json", out, "--frame-stride", "40"], "--frame-stride 40"),
        (["eval", videos["clean"], "--json", out, "--segment-seconds", "-1"], "--segment-seconds"),
        (["eval", videos["clean"], "--json", tmp_path], "is a folder"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2 and message in one_line_error(err), (argv, err)
        assert not out.exists()
    code, _, _ = run(capsys, "eval", short, "--json", out, "--segment-seconds", "0.5")
    assert code == 0  # the suggested segment length works


# ---- VBench bridge ---------------------------------------------------------------------------------------------

# Quality dimensions chosen so each normalises to 0.5 with VBench's (min, max): (x - min) / (max - min).
QUALITY = {
    "subject_consistency": 0.1462 + 0.5 * (1.0 - 0.1462),  # 0.5731
    "background_consistency": 0.2615 + 0.5 * (1.0 - 0.2615),  # 0.63075
    "temporal_flickering": 0.6293 + 0.5 * (1.0 - 0.6293),  # 0.81465
    "motion_smoothness": 0.706 + 0.5 * (0.9975 - 0.706),  # 0.85175
    "dynamic_degree": 0.2,  # (0, 1), weight 0.5
    "aesthetic_quality": 0.5,
    "imaging_quality": 0.5,
}
# The three Semantic dimensions that custom-input mode can run.
SEMANTIC = {"human_action": 0.8, "temporal_style": 0.182, "overall_consistency": 0.091}  # 0.8, 0.5, 0.25


def write_results(folder, name, scores):
    folder.mkdir(parents=True, exist_ok=True)
    data = {dim: [score, [{"video_path": "v.mp4", "video_results": score}]] for dim, score in scores.items()}
    (folder / f"results_{name}_eval_results.json").write_text(json.dumps(data))


def test_bridge_aggregates_by_hand():
    bridge = load_bridge()
    agg = bridge.aggregates({**QUALITY, **SEMANTIC})
    # weighted mean of the normalised scores; the weights sum to 6 + 0.5 (Dynamic Degree)
    quality = (4 * 0.5 + 0.5 * 0.2 + 0.5 + 0.5) / 6.5
    semantic = (0.8 + 0.182 / 0.364 + 0.091 / 0.364) / 3  # (0.8 + 0.5 + 0.25) / 3
    assert agg["quality"]["value"] == pytest.approx(quality)
    assert agg["semantic"]["value"] == pytest.approx(semantic)
    assert (agg["semantic"]["dims"], agg["semantic"]["of"], agg["quality"]["dims"]) == (3, 9, 7)
    assert agg["final"]["value"] == pytest.approx((quality + semantic) / 2)  # the paper's Final
    assert agg["total"]["value"] == pytest.approx((4 * quality + semantic) / 5)  # VBench's Total

    plain = bridge.aggregates({**QUALITY, **SEMANTIC}, mode="mean")
    assert plain["quality"]["value"] == pytest.approx(sum(QUALITY.values()) / 7)
    assert plain["semantic"]["value"] == pytest.approx((0.8 + 0.182 + 0.091) / 3)
    assert bridge.aggregates(QUALITY)["final"]["value"] is None  # no Semantic dimension at all


def test_bridge_full_semantic_set_normalisation():
    bridge = load_bridge()
    scores = {"object_class": 0.9, "multiple_objects": 0.6, "human_action": 0.8, "color": 0.85,
              "spatial_relationship": 0.7, "scene": 0.4111, "appearance_style": 0.0009 + 0.5 * (0.2855 - 0.0009),
              "temporal_style": 0.182, "overall_consistency": 0.182}  # fmt: skip
    # scene 0.4111 / 0.8222 = 0.5; appearance style, temporal style and overall consistency also normalise to 0.5
    expected = (0.9 + 0.6 + 0.8 + 0.85 + 0.7 + 4 * 0.5) / 9
    agg = bridge.aggregates(scores)
    assert agg["semantic"]["value"] == pytest.approx(expected) and agg["semantic"]["dims"] == 9


def test_bridge_cli_merges_files_and_writes_tables(tmp_path):
    bridge = load_bridge()
    base, ours = tmp_path / "base", tmp_path / "ours"
    write_results(base / "quality", "2025-01-01-10:00:00", QUALITY)
    write_results(base / "semantic", "2025-01-01-11:00:00", SEMANTIC)
    write_results(ours, "2025-01-01-10:00:00", {**QUALITY, "imaging_quality": 0.1})
    write_results(ours / "rerun", "2025-01-02-10:00:00", {"imaging_quality": 0.7, **SEMANTIC})  # newer wins
    md, table = tmp_path / "out" / "t.md", tmp_path / "out" / "t.csv"
    assert bridge.main(["--run", f"Baseline={base}", "--run", f"+ TokenTrim={ours}", "--md", str(md),
                        "--csv", str(table)]) == 0  # fmt: skip
    rows = {r["row"]: r for r in csv.DictReader(io.StringIO(table.read_text()))}
    assert float(rows["Imaging Quality"]["Baseline"]) == pytest.approx(50.0)
    assert float(rows["Imaging Quality"]["+ TokenTrim"]) == pytest.approx(70.0)
    assert rows["Color"]["Baseline"] == ""  # not evaluated
    quality = (4 * 0.5 + 0.5 * 0.2 + 0.5 + 0.5) / 6.5
    semantic = (0.8 + 0.5 + 0.25) / 3
    final = rows["Final Score = (Semantic + Quality) / 2"]
    assert float(final["Baseline"]) == pytest.approx(100 * (quality + semantic) / 2, abs=1e-4)
    assert rows["Semantic Score"]["Baseline coverage"] == "3/9 dims"
    assert rows["Quality Score"]["Baseline coverage"] == ""
    quality_ours = (4 * 0.5 + 0.5 * 0.2 + 0.5 + 0.7) / 6.5
    assert float(rows["Quality Score"]["+ TokenTrim"]) == pytest.approx(100 * quality_ours, abs=1e-4)
    text = md.read_text()
    assert "| Dimension | Baseline | + TokenTrim |" in text and "VBench normalisation" in text
    assert f"| Quality Score | {100 * quality:.2f} | {100 * quality_ours:.2f} |" in text

    assert bridge.main(["--run", f"B={base}", "--aggregate", "mean", "--md", str(md)]) == 0
    assert "PLAIN MEAN" in md.read_text() and "Quality Score (plain mean)" in md.read_text()


def test_bridge_errors(tmp_path, capsys):
    bridge = load_bridge()
    assert bridge.main(["--run", f"B={tmp_path / 'nothing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_results(tmp_path / "bad", "x", {"not_a_dimension": 0.3})
    assert bridge.main(["--run", f"B={tmp_path / 'bad'}"]) == 2
    assert "unknown VBench dimension" in capsys.readouterr().err
    assert bridge.main(["--run", "no-equals-sign"]) == 2


def test_bridge_shell_script_wiring(tmp_path):
    """The shell script with a stand-in for `vbench evaluate` that writes VBench-format results."""
    fake = tmp_path / "fake_vbench"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'while [ $# -gt 0 ]; do case "$1" in --dimension) dim=$2; shift 2;; --output_path) out=$2; shift 2;; '
        "*) shift;; esac; done\n"
        'echo "{\\"$dim\\": [0.5, []]}" > "${out}results_t_eval_results.json"\n'
    )
    fake.chmod(0o755)
    videos = tmp_path / "ours"
    videos.mkdir()
    env = {**os.environ, "VBENCH_EVALUATE": str(fake), "VBENCH_OUT": str(tmp_path / "res"), "PYTHON": sys.executable,
           "VBENCH_DIMENSIONS": "subject_consistency dynamic_degree human_action"}  # fmt: skip
    proc = subprocess.run(["bash", str(REPO / "scripts" / "vbench_bridge.sh"), str(videos)], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {r["row"]: r for r in csv.DictReader(io.StringIO((tmp_path / "res" / "table.csv").read_text()))}
    assert float(rows["Subject Consistency"]["ours"]) == 50.0
    quality = ((0.5 - 0.1462) / (1 - 0.1462) + 0.5 * 0.5) / 1.5
    assert float(rows["Quality Score"]["ours"]) == pytest.approx(100 * quality, abs=1e-4)
    assert (tmp_path / "res" / "ours" / "human_action" / "results_t_eval_results.json").exists()
    rerun = subprocess.run(["bash", str(REPO / "scripts" / "vbench_bridge.sh"), str(videos)], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert rerun.returncode == 0 and "skipped" in rerun.stdout
