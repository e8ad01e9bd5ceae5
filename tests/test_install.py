"""`make install` prints no warning that comes from this project: the package metadata is built the way
`make install` builds it (pip, editable) and as a wheel, from a copy of the repository's files, and pip's output
is read for warnings from the build backend (setuptools' deprecations and notices)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _copy_of_the_repository(dest: Path) -> Path:
    """The files git knows (a fresh clone's), copied as they are in the working tree."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _warnings(output: str) -> list[str]:
    words = ("warning", "deprecat", "!!")
    return [line.strip() for line in output.splitlines() if any(w in line.lower() for w in words)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    [
        # make install's editable install, into a scratch prefix: --ignore-installed leaves this environment's
        # own installation of the package alone
        ["install", "-q", "--ignore-installed", "--prefix", "prefix", "-e", "."],
        ["wheel", "-q", "-w", "dist", "."],
    ],
    ids=["editable", "wheel"],
)
def test_building_the_package_prints_no_warning(how, tmp_path):
    pytest.importorskip("setuptools")
    repo = _copy_of_the_repository(tmp_path / "repo")
    done = subprocess.run(
        [sys.executable, "-m", "pip", *how, "--no-deps", "--no-build-isolation", "--no-index"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert _warnings(output) == [], output


def test_the_warning_filter_sees_setuptools_warnings():
    """What pip printed for the licence as a TOML table (setuptools 84) is caught."""
    seen = """  /x/setuptools/config/_apply_pyprojecttoml.py:82: BuildBackendWarning: `project.license` as a TOML table is deprecated
  !!
          Please use a simple string containing a SPDX expression for `project.license`.
  /x/setuptools/command/editable_wheel.py:354: BuildBackendWarning: Editable installation."""
    assert len(_warnings(seen)) == 3
