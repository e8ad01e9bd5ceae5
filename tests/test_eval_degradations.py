"""A video that lost information never wins a pair: degraded copies of a synthesised moving scene (losses of colour,
detail, resolution, motion, frame rate and content; from the start and progressive) are never preferred over
their source, in either order, and each is flagged for what it lost; an H.264 round trip is a tie.

The scene (tokentrim.eval.scene: a camera panning over a detailed still world while textured discs move, plus
sensor noise) is rendered here at 96 x 160, 4 s at 16 fps, and evaluated in 1 s segments (four segments, the
start window of 0.5 s, the last quarter = the last segment).
"""

from __future__ import annotations

import numpy as np
import pytest

from tokentrim.eval import compare_reports, evaluate_frames
from tokentrim.eval.degrade import BY_NAME, DEGRADATIONS, ramp
from tokentrim.eval.scene import moving_scene
from tokentrim.eval.verdict import majority

FPS, SECONDS, SEGMENT = 16.0, 4.0, 1.0

# What each copy must at least be flagged for (the measure that sees its loss).
EXPECTED = {
    "grey": "colourfulness", "desaturate": "colourfulness", "desaturating": "colourfulness",
    "blur": "detail", "blurring": "detail", "down_up": "detail", "shrinking": "detail",
    "still_pan": "content_motion", "slow": "temporal_information", "slowing": "content_motion",
    "doubled": "effective_frame_rate", "low_fps": "effective_frame_rate", "stuttering": "effective_frame_rate",
    "fade": "spatial_information", "fading": "spatial_information", "masked": "textured_area",
    "masking": "textured_area",
}  # fmt: skip
FLIP = {"baseline": "treated", "treated": "baseline", "tie": "tie"}


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return moving_scene(96, 160, SECONDS, FPS, seed=0)


@pytest.fixture(scope="module")
def source_report(source) -> dict:
    return evaluate_frames(source, FPS, SEGMENT)


def verdicts(a: dict, b: dict) -> tuple[dict, dict]:
    """Both orders; asserts that swapping the videos swaps the verdict, the votes and the flags."""
    forward, backward = compare_reports(a, b), compare_reports(b, a)
    assert backward["verdict"] == FLIP[forward["verdict"]]
    assert {c: v["vote"] for c, v in backward["categories"].items()} == {
        c: FLIP[v["vote"]] for c, v in forward["categories"].items()
    }
    assert backward["flags"] == {
        "baseline": forward["flags"]["treated"],
        "treated": forward["flags"]["baseline"],
    }
    return forward, backward


def test_every_kind_of_loss_is_covered():
    assert {d.loss for d in DEGRADATIONS} == {
        "colour",
        "detail",
        "resolution",
        "motion",
        "frame rate",
        "content",
    }
    assert {d.loss for d in DEGRADATIONS if d.progressive} >= {
        "colour",
        "detail",
        "motion",
        "frame rate",
        "content",
    }
    assert set(EXPECTED) == set(BY_NAME)


@pytest.mark.parametrize("name", [d.name for d in DEGRADATIONS])
def test_degraded_copy_is_never_preferred_and_is_flagged(source, source_report, name):
    copy, fps = BY_NAME[name].make(source, FPS)
    report = evaluate_frames(copy, fps, SEGMENT)
    forward, _ = verdicts(source_report, report)
    assert forward["verdict"] != "treated", (name, forward["reason"])
    assert forward["flags"]["baseline"] == [], forward["flags"]  # the source is never the poorer one
    flagged = {d["measure"] for d in forward["shortfalls"]["treated"]}
    assert EXPECTED[name] in flagged, (name, forward["flags"]["treated"])
    for text in forward["flags"]["treated"]:  # the flag names the measure and both values
        assert " vs " in text


def test_h264_round_trip_is_a_tie(source, source_report, tmp_path):
    from tokentrim.video import read_video, write_video

    frames, fps = read_video(write_video(tmp_path / "scene.mp4", source, fps=int(FPS)))
    forward, _ = verdicts(source_report, evaluate_frames(frames, fps, SEGMENT))
    assert forward["verdict"] == "tie" and forward["flags"] == {"baseline": [], "treated": []}


def test_the_degradations_do_what_they_say(source):
    n = len(source)
    grey, _ = BY_NAME["grey"].make(source, FPS)
    assert (np.ptp(grey.astype(int), axis=-1) == 0).all()  # R = G = B
    doubled, _ = BY_NAME["doubled"].make(source, FPS)
    np.testing.assert_array_equal(doubled[0::2], doubled[1::2])
    np.testing.assert_array_equal(doubled[::2], source[: n // 2])
    low, fps = BY_NAME["low_fps"].make(source, FPS)
    assert fps == FPS / 2 and len(low) == n // 2 and (low == source[::2]).all()
    slow, _ = BY_NAME["slow"].make(source, FPS)
    np.testing.assert_array_equal(slow[::2], source[: n // 2])  # the even frames are the source at half speed
    still, _ = BY_NAME["still_pan"].make(source, FPS)
    held, _ = BY_NAME["still_pan"].make(np.repeat(source[:1], n, axis=0), FPS)
    np.testing.assert_array_equal(still, held)  # only the first frame is shown ...
    assert np.abs(still[-1].astype(int) - still[0]).mean() > 10  # ... by a moving camera
    masked, _ = BY_NAME["masked"].make(source, FPS)
    assert (np.ptp(masked[:, -32:].reshape(-1, 3), axis=0) == 0).all()  # the bottom third is one colour
    stutter, _ = BY_NAME["stuttering"].make(source, FPS)
    same = (np.diff(stutter.astype(int), axis=0) == 0).all(axis=(1, 2, 3))
    assert same[: n // 4].mean() < same[-n // 4 :].mean()  # frames are held longer at the end
    desat, _ = BY_NAME["desaturating"].make(source, FPS)
    np.testing.assert_array_equal(desat[0], source[0])
    assert (np.ptp(desat[-1].astype(int), axis=-1) <= 1).all()  # grey at the end (rounding)
    np.testing.assert_allclose(ramp(5), [0, 0.25, 0.5, 0.75, 1])


def test_without_the_level_check_the_copies_are_not_worse(source, source_report):
    """Why the comparability check exists: a copy without colour, with every frame twice or a still picture under
    a moving camera drifts no more than its source, so the drift categories alone never prefer the source."""
    for name in ("grey", "doubled", "still_pan"):
        copy, fps = BY_NAME[name].make(source, FPS)
        report = evaluate_frames(copy, fps, SEGMENT)
        votes = {c: v["vote"] for c, v in compare_reports(source_report, report)["categories"].items()}
        assert majority(votes) != "baseline", (name, votes)


@pytest.mark.slow
def test_margins_are_twice_the_spread_of_equally_good_videos(tmp_path):
    """The margins' derivation (levels.py, scripts/eval_margins.py) on two fresh renders: the two 8 s halves of a
    16 s clip, and a clip and its H.264 round trip, never differ by more than half a measure's margin."""
    from tokentrim.eval.levels import LEVELS, log_ratio
    from tokentrim.video import read_video, write_video

    for seed in (20, 21):
        clip = moving_scene(96, 160, 16.0, FPS, seed)
        half = len(clip) // 2
        first, second = evaluate_frames(clip[:half], FPS), evaluate_frames(clip[half:], FPS)
        encoded = evaluate_frames(
            read_video(write_video(tmp_path / f"{seed}.mp4", clip[:half], fps=16))[0], FPS
        )
        for other in (second, encoded):
            for spec in LEVELS:
                a, b = first["levels"][spec.name], other["levels"][spec.name]
                assert abs(log_ratio(spec, a["start"], b["start"])) <= spec.margin / 2, (seed, spec.name)
                assert abs(a["loss"] - b["loss"]) <= spec.margin / 2, (seed, spec.name)


def test_degradations_script_writes_copies_only_to_a_temporary_folder(tmp_path, monkeypatch, capsys):
    """scripts/eval_degradations.py end to end on a small synthetic scene, each copy encoded and read back
    (--encode): one row per copy and the round trip, both orders, and no video left behind."""
    import importlib.util
    import json
    import sys
    import tempfile
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "eval_degradations.py"
    spec = importlib.util.spec_from_file_location("eval_degradations", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "rows.json"
    argv = ["eval_degradations.py", "--synthetic", "48x80", "--seconds", "4", "--segment-seconds", "1",
            "--only", "grey,low_fps", "--encode", "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    rows = json.loads(out.read_text())
    assert [r["copy"] for r in rows] == ["H.264 round trip", "grey", "low_fps"]
    assert all(r["encoded"] for r in rows)
    assert rows[0]["verdict"] == rows[0]["swapped"] == "tie"
    assert all("copy" not in (r["verdict"], r["swapped"]) for r in rows)
    assert any(f.startswith("less colour") for f in rows[1]["copy_flags"])
    assert "degraded copies preferred over their source: 0 of 2" in capsys.readouterr().out
    assert list(scratch.iterdir()) == []  # the encoded copies and their folder are gone
