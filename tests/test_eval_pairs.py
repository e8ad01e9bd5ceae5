"""`tokentrim eval --pairs FILE`: a verdict per pair, wins/ties/losses, the exact sign test and the
Clopper-Pearson interval (checked against hand-computed values), duplicate and seed-match warnings, bad input."""

import json
import shutil
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from test_eval_scenes import FPS, finish, frozen, progressive_blur, reference, reference_float, texture

from tokentrim.cli import main
from tokentrim.errors import UserError
from tokentrim.eval.pairs import read_pairs_file
from tokentrim.video import write_video


def other_seed() -> np.ndarray:
    """The moving scene on another background texture: what an unmatched seed gives."""
    return finish(reference_float(seed=9), seed=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    for name, make in (
        ("clean", reference),
        ("blur", progressive_blur),
        ("still", frozen),
        ("other", other_seed),
    ):
        write_video(folder / f"{name}.mp4", make(), fps=FPS)
    shutil.copy(folder / "clean.mp4", folder / "copy.mp4")  # same bytes, another name
    return folder


PAIRS = """# baseline treated
blur.mp4 clean.mp4
still.mp4 clean.mp4

blur.mp4 copy.mp4
clean.mp4 blur.mp4
still.mp4 other.mp4
clean.mp4 copy.mp4
"""
# expected: win (less drift), win (baseline frozen), win, loss, win (baseline frozen), tie (identical content)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_pairs_summary_statistics_and_warnings(folder, tmp_path, capsys):
    (folder / "pairs.txt").write_text(PAIRS)
    out = tmp_path / "pairs.json"
    code, stdout, stderr = run(capsys, "eval", "--pairs", folder / "pairs.txt", "--json", out)
    assert code == 0
    data = json.loads(out.read_text())
    assert [p["verdict"] for p in data["pairs"]] == [
        "treated",
        "treated",
        "treated",
        "baseline",
        "treated",
        "tie",
    ]
    assert data["pairs"][1]["flags"] == {"baseline": ["frozen"], "treated": []}
    assert data["pairs"][0]["treated"]["path"] == str(folder / "clean.mp4")  # relative to the pairs file
    s = data["summary"]
    assert (s["pairs"], s["wins"], s["ties"], s["losses"]) == (6, 4, 1, 1)
    # sign test over the 5 decisive pairs: 2 P(X <= 1), X ~ Binomial(5, 1/2) = 2 (1 + 5) / 32
    assert s["sign_test_p"] == pytest.approx(12 / 32)
    # Clopper-Pearson for 4 of 5: the ends solve P(X >= 4 | p) = 0.025 and P(X <= 4 | p) = 0.025
    low, high = s["win_rate_interval"]

    def at_least(k, p):
        return sum(comb(5, i) * p**i * (1 - p) ** (5 - i) for i in range(k, 6))

    assert at_least(4, low) == pytest.approx(0.025, abs=1e-9) and 1 - at_least(5, high) == pytest.approx(
        0.025
    )
    assert s["win_rate"] == pytest.approx(0.8) and low < 0.8 < high
    assert "sign test p = 0.375" in stdout and "wins) 4, ties 1, baseline preferred (losses) 1" in stdout
    # the category votes of every pair side by side, one row each
    assert stdout.count("\n  6     ") == 1 and "temporal" in stdout

    warnings = data["warnings"]
    assert all(f"warning: {w}" in stderr for w in warnings)
    duplicates = [w for w in warnings if w.startswith("identical content")]
    seeds = [w for w in warnings if "not seed-matched" in w]
    assert len(duplicates) + len(seeds) == len(warnings)
    # one warning per group of same content: blur (pairs 1, 3, 4), still (2, 5), clean + its copy (1, 2, 3, 4, 6)
    assert len(duplicates) == 3
    (group,) = [w for w in duplicates if "copy.mp4" in w]
    assert group.count("clean.mp4") == 4 and group.count("copy.mp4") == 2
    assert len(seeds) == 1 and seeds[0].startswith("pair 5:")  # the only pair of different pictures


def test_sign_test_value_is_the_exact_binomial(folder, tmp_path, capsys):
    """Nine wins and one loss (the same two files repeated, which the duplicate warnings say): p = 2 * 11 / 1024."""
    lines = ["blur.mp4 clean.mp4"] * 9 + ["clean.mp4 blur.mp4"]
    (folder / "ten.txt").write_text("\n".join(lines) + "\n")
    code, _, _ = run(capsys, "eval", "--pairs", folder / "ten.txt", "--json", tmp_path / "ten.json")
    s = json.loads((tmp_path / "ten.json").read_text())["summary"]
    assert code == 0 and (s["wins"], s["losses"]) == (9, 1)
    expected = Fraction(2 * (comb(10, 0) + comb(10, 1)), 2**10)
    assert s["sign_test_p"] == pytest.approx(float(expected))


def test_read_pairs_file_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mp4 b.mp4\na.mp4 b.mp4 c.mp4\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: expected two paths"):
        read_pairs_file(bad)
    bad.write_text("# only a comment\n\n")
    with pytest.raises(UserError, match="lists no pairs"):
        read_pairs_file(bad)
    bad.write_text('"a b.mp4" /abs/c.mp4\n')
    assert read_pairs_file(bad) == [(tmp_path / "a b.mp4", tmp_path.root / type(tmp_path)("abs/c.mp4"))]


def test_pairs_user_errors_exit_2_without_json(folder, tmp_path, capsys):
    out = tmp_path / "x.json"
    (folder / "missing.txt").write_text("clean.mp4 nowhere.mp4\n")
    (folder / "three.txt").write_text("clean.mp4 blur.mp4 still.mp4\n")
    cases = [
        (["--pairs", tmp_path / "none.txt"], "--pairs file not found"),
        (["--pairs", folder / "missing.txt"], "video file not found"),
        (["--pairs", folder / "three.txt"], "expected two paths"),
        (
            ["--pairs", folder / "three.txt", "--pair", folder / "clean.mp4", folder / "blur.mp4"],
            "exactly one of",
        ),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, "eval", *argv, "--json", out)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], (argv, err)
        assert not out.exists()


def test_seed_check_sees_a_different_picture_in_the_same_palette():
    """Two fine random textures: the same colours everywhere (tile means agree within a few dE) but a different
    layout (thumbnails uncorrelated): warned. The same picture with mild noise: not warned."""
    from tokentrim.eval import evaluate_frames
    from tokentrim.eval.pairs import first_frame_distance, seed_warning

    def still(seed, noise_seed):
        frames = np.repeat(texture(64, 112, seed=seed, blur=1.0)[None], 4 * FPS, axis=0)
        return evaluate_frames(finish(frames, seed=noise_seed), FPS)

    a, b, a_again = still(0, 1), still(1, 2), still(0, 3)
    assert first_frame_distance(a, b) < 10.0
    warning = seed_warning(7, a, b)
    assert warning is not None and warning.startswith("pair 7:") and "correlation" in warning
    assert seed_warning(7, a, a_again) is None
