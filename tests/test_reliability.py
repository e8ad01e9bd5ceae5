"""A full disk, an early Ctrl-C, two runs on one output, odd start images: one clear line, nothing left behind.

Full disk, three ways, all real refusals by the kernel:
- `/dev/full`: the temporaries of the chosen outputs are made links to it, so every write to them fails with
  ENOSPC exactly as on a full disk (ffmpeg's trailer, PNG, JSON, torch.save, safetensors); runs everywhere;
- a file-size limit (`ulimit -f`) on a child process: ffmpeg is stopped by SIGXFSZ mid-video, so only its exit
  status tells;
- a small tmpfs mounted in a private mount namespace (`unshare`), filled up: where the platform allows it (root,
  or unprivileged user namespaces), else skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tokentrim.app.cli import main
from tokentrim.errors import UserError
from tokentrim.files import atomic_dir, atomic_path, claim, release, write_json
from tokentrim.video import VideoWriter, read_video, write_png_frames, write_video

ROOT = Path(__file__).resolve().parent.parent
TOY = ["generate", "--preset", "toy", "--prompt", "a red circle", "--latent-frames", "3"]


def noise(t=9, h=64, w=64, seed=0) -> np.ndarray:
    """Frames H.264 cannot compress much: an mp4 of a few hundred KB."""
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The one message line of stderr (progress bars and warnings aside)."""
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith("WARNING") and not re.search(r"\d+/\d+ \[", line)]  # fmt: skip
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# Full disk: /dev/full ---------------------------------------------------------------------------------------------
@pytest.fixture
def full_disk(monkeypatch):
    """`full_disk("o.mp4", "o")`: from then on the temporaries of those outputs (files or folders) sit on
    /dev/full, where every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this platform")
    before = os.stat("/dev/full")
    names: set[str] = set()
    mkstemp, mkdtemp = tempfile.mkstemp, tempfile.mkdtemp

    def chosen(path: str) -> bool:
        return any(os.path.basename(path).startswith(f".{name}.tmp-") for name in names)

    def full_file(*args, **kwargs):
        fd, path = mkstemp(*args, **kwargs)
        if chosen(path):
            os.close(fd)
            os.remove(path)
            os.symlink("/dev/full", path)
            fd = os.open(os.devnull, os.O_RDONLY)
        return fd, path

    def full_folder(*args, **kwargs):
        path = mkdtemp(*args, **kwargs)
        if chosen(path):  # the files a writer will create there
            for i in range(100):
                os.symlink("/dev/full", os.path.join(path, f"{i:05d}.png"))
        return path

    monkeypatch.setattr(tempfile, "mkstemp", full_file)
    monkeypatch.setattr(tempfile, "mkdtemp", full_folder)
    yield lambda *chosen_names: names.update(chosen_names)
    after = os.stat("/dev/full")
    assert (after.st_mode, after.st_rdev) == (before.st_mode, before.st_rdev)  # the device itself untouched


def refused(path) -> str:
    return f"no space left on device while writing {path}; nothing was written"


def test_mp4_refused_by_a_full_disk_is_one_error_and_no_file(tmp_path, full_disk):
    full_disk("o.mp4")
    target = tmp_path / "o.mp4"
    target.write_bytes(b"the previous video")
    with pytest.raises(UserError) as caught:
        write_video(target, noise())  # ffmpeg fails writing its trailer and exits non-zero
    assert str(caught.value) == refused(target)
    assert "ffmpeg version" not in str(caught.value) and "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]  # no temporary, no lock file
    assert target.read_bytes() == b"the previous video"  # replaced only by a complete file


def test_progressive_mp4_refused_at_close(tmp_path, full_disk):
    """The frames go through (ffmpeg buffers them); the failure shows at the end, and the file never appears."""
    full_disk("p.mp4")
    with pytest.raises(UserError, match="no space left on device while writing"):
        with VideoWriter(tmp_path / "p.mp4") as writer:
            writer.append(noise(t=3))
            writer.append(noise(t=3, seed=1))
    assert list(tmp_path.iterdir()) == []


def test_progressive_mp4_refused_mid_video(tmp_path, full_disk):
    """ffmpeg meets the full disk while frames still come (it has written part of the video and exited): the next
    append is the same one-line error, and nothing is left."""
    full_disk("m.mp4")
    with pytest.raises(UserError, match="no space left on device while writing"):
        with VideoWriter(tmp_path / "m.mp4") as writer:
            # enough frames for the encoder to emit packets, which the muxer then cannot write
            writer.append(noise(t=120))
            end = time.time() + 60
            while writer._proc.poll() is None and time.time() < end:
                time.sleep(0.01)
            assert writer._proc.poll() is not None, "ffmpeg kept every frame in memory"
            writer.append(noise(t=3, seed=1))
    assert list(tmp_path.iterdir()) == []


def test_png_folder_refused_by_a_full_disk(tmp_path, full_disk):
    full_disk("frames")
    with pytest.raises(UserError) as caught:
        with atomic_dir(tmp_path / "frames") as folder:
            write_png_frames(folder, noise(t=3))
    assert str(caught.value) == refused(tmp_path / "frames")
    assert list(tmp_path.iterdir()) == []


def test_json_refused_by_a_full_disk(tmp_path, full_disk):
    full_disk("log.json")
    (tmp_path / "log.json").write_text('{"old": true}\n')
    with pytest.raises(UserError) as caught:
        write_json(tmp_path / "log.json", {"blocks": list(range(1000))})
    assert str(caught.value) == refused(tmp_path / "log.json")
    assert json.loads((tmp_path / "log.json").read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.json"]


def test_latents_refused_by_a_full_disk(tmp_path, full_disk):
    """torch.save into a file object (generate's --save-latents): the refusal shows when the file is closed.
    (safetensors writes its own temporary and renames it, so /dev/full cannot stand in for a full disk there:
    merge-lora's checkpoint is tested on a real full tmpfs, test_safetensors_on_a_full_tmpfs.)"""
    import torch

    full_disk("o.latents.pt")
    with pytest.raises(UserError) as caught:
        with atomic_path(tmp_path / "o.latents.pt") as tmp, open(tmp, "wb") as f:
            torch.save(torch.zeros(10_000), f)
    assert str(caught.value) == refused(tmp_path / "o.latents.pt")
    assert list(tmp_path.iterdir()) == []


def test_refusals_reported_in_words_are_found():
    """Native writers report the OS error in their own words (safetensors: "(os error 28)"; torch: "[Errno 28]"
    inside a RuntimeError); the errno in them, or behind them, is found. Other errors are not refusals."""
    from tokentrim.files import refused_errno

    assert (
        refused_errno(
            RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        )
        == 28
    )
    assert refused_errno(RuntimeError("writing failed: [Errno 122] Disk quota exceeded")) == 122
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as err:
            raise RuntimeError("file write failed") from err
    except RuntimeError as wrapped:
        assert refused_errno(wrapped) == 28
    assert refused_errno(OSError(2, "No such file or directory")) is None
    assert refused_errno(ValueError("bad value 28")) is None


def test_bugs_are_not_mistaken_for_a_full_disk(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("partial")
            print(1 / 0)
    with pytest.raises(FileNotFoundError):  # an errno, but not a refusal: a bug keeps its traceback
        with atomic_path(tmp_path / "y.json"):
            open(tmp_path / "missing" / "z")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("output", ["o.mp4", "o.json", "o.latents.pt", "o"])
def test_generate_on_a_full_disk_writes_nothing(output, tmp_path, full_disk, capsys, monkeypatch):
    """`generate` with every output: whichever one the disk refuses, the run says so in one line, exits 2, and
    none of its outputs appear (they are renamed together once all are complete)."""
    monkeypatch.chdir(tmp_path)
    full_disk(output)
    code, err = run(TOY + ["--out", "o.mp4", "--png-frames", "--save-latents"], capsys)
    assert code == 2
    assert one_line(err) == f"error: {refused(output)}"
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_stopped_by_a_file_size_limit(tmp_path):
    """ffmpeg killed by SIGXFSZ mid-video (a real `ulimit -f`): only its exit status says so."""
    import resource

    script = textwrap.dedent(f"""
        import numpy as np
        from tokentrim.errors import UserError
        from tokentrim.video import write_video
        frames = np.random.default_rng(0).integers(0, 256, (24, 128, 128, 3), dtype=np.uint8)
        try:
            write_video({str(tmp_path / "big.mp4")!r}, frames)
        except UserError as err:
            print(err)
    """)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)  # fmt: skip
    assert (
        done.stdout.strip() == f"file too large while writing {tmp_path / 'big.mp4'}; nothing was written"
    ), done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


# Full disk: a real small tmpfs -----------------------------------------------------------------------------------
def _namespace() -> list[str] | None:
    """`unshare` arguments that give a private mount namespace where `mount -t tmpfs` works, or None."""
    if shutil.which("unshare") is None or sys.platform != "linux":
        return None
    for args in (["unshare", "-m"], ["unshare", "-r", "-m"]):
        probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k none $d && umount $d; rmdir $d"
        try:
            if subprocess.run([*args, "sh", "-c", probe], capture_output=True, timeout=20).returncode == 0:
                return args
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def on_small_tmpfs(folder: Path, script: str, free: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run python `script` with a 1 MiB tmpfs mounted at `folder` (private to the child) that has about `free`
    bytes left."""
    args = _namespace()
    if args is None:
        pytest.skip(
            "no private mount namespace for a tmpfs here (needs root or unprivileged user namespaces)"
        )
    fill = f"head -c $(( $(df -B1 --output=avail {folder} | tail -1) - {free} )) /dev/zero > {folder}/filler"
    command = (
        f'mount -t tmpfs -o size=1m none {folder} && {fill} && cd {folder} && exec {sys.executable} -c "$0"'
    )
    return subprocess.run([*args, "sh", "-c", command, script], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


def test_writers_on_a_full_tmpfs(tmp_path):
    script = textwrap.dedent("""
        import os, numpy as np
        from tokentrim.errors import UserError
        from tokentrim.files import atomic_dir, write_json
        from tokentrim.video import write_png_frames, write_video
        frames = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
        def png(path):
            with atomic_dir(path) as folder:
                write_png_frames(folder, frames)
        for write in (lambda: write_video("o.mp4", frames), lambda: png("o"),
                      lambda: write_json("o.json", {"x": list(range(20000))})):
            try:
                write()
                print("written")
            except UserError as err:
                print(err)
        print(sorted(os.listdir(".")))
    """)
    done = on_small_tmpfs(tmp_path, script, free=16_000)
    names = ("o.mp4", "o", "o.json")
    assert done.stdout.splitlines() == [refused(name) for name in names] + ["['filler']"], (
        done.stdout + done.stderr
    )


@pytest.mark.slow
def test_safetensors_on_a_full_tmpfs(tmp_path):
    """A merged checkpoint (safetensors writes in native code and says "(os error 28)")."""
    script = textwrap.dedent("""
        import os, torch
        from safetensors.torch import save_file
        from tokentrim.errors import UserError
        from tokentrim.files import atomic_path
        try:
            with atomic_path("merged.safetensors") as tmp:
                save_file({"w": torch.zeros(100_000)}, str(tmp))
        except UserError as err:
            print(err)
        print(sorted(os.listdir(".")))
    """)
    done = on_small_tmpfs(tmp_path, script, free=16_000)
    assert done.stdout.splitlines() == [refused("merged.safetensors"), "['filler']"], (
        done.stdout + done.stderr
    )


@pytest.mark.slow
def test_generate_on_a_full_tmpfs(tmp_path):
    code = f"import sys, os\nfrom tokentrim.app.cli import main\ncode = main({TOY + ['--out', 'o.mp4']!r})\n"
    code += "print(sorted(os.listdir('.')))\nsys.exit(code)"
    done = on_small_tmpfs(tmp_path, code, free=2_000)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert (
        line.startswith("error: no space left on device while writing o.") and "nothing was written" in line
    )
    assert done.stdout.strip() == "['filler']"


# Interrupts from the first line ------------------------------------------------------------------------------------
SLOW_IMPORT = textwrap.dedent("""
    import importlib.abc, sys, time
    class SlowTorch(importlib.abc.MetaPathFinder):  # a busy machine: torch takes a minute to import
        def find_spec(self, name, path, target=None):
            if name == "torch":
                print("importing torch", flush=True)
                time.sleep(120)
    sys.meta_path.insert(0, SlowTorch())
    from tokentrim.app.cli import main  # what the `tokentrim` script does
    sys.exit(main(sys.argv[1:]))
""")


def test_the_command_line_module_is_light():
    """`tokentrim.app.cli` (the console script's module) imports no heavy library: the signal handlers are in
    place before torch starts importing."""
    code = "import sys, tokentrim.app.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])  # fmt: skip
def test_interrupt_during_import_is_one_line(sig, code, line, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_IMPORT, *TOY, "--out", str(tmp_path / "o.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "importing torch"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (code, f"{line}\n")
    assert list(tmp_path.iterdir()) == []


KI_INSIDE_PYRUN = textwrap.dedent("""
    import ctypes, sys
    from tokentrim.app import cli
    run = ctypes.pythonapi.PyRun_StringFlags  # how an extension module runs Python code
    run.restype, run.argtypes = ctypes.py_object, [ctypes.c_char_p, ctypes.c_int, ctypes.py_object,
                                                   ctypes.py_object, ctypes.c_void_p]
    def build_parser():  # Ctrl-C lands while such code runs
        run(b"raise KeyboardInterrupt", 257, {}, {}, None)
    cli.build_parser = build_parser
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_an_interrupt_inside_code_an_extension_runs_still_exits_130(tmp_path):
    """CPython ends a `python -m` process by SIGINT (-2) when a KeyboardInterrupt once left code run through
    `PyRun_*`, even though `main` handled it and returned 130; `main` clears that memory."""
    (tmp_path / "ki_inside_pyrun.py").write_text(KI_INSIDE_PYRUN)
    done = subprocess.run([sys.executable, "-m", "ki_inside_pyrun", *TOY], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (130, "interrupted\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_command_ends_the_process_at_once_and_quietly(sig):
    """`interrupts.quiet_shutdown`, set by the `tokentrim` entry point once `main` returns: a signal while Python
    shuts down ends the process with 128 + its number, printed output flushed, no traceback."""
    code = ("import os, signal, sys, time\n"
            "from tokentrim.app import interrupts\n"
            "interrupts.quiet_shutdown()\n"
            "print('done', end='')  # buffered: flushed by the handler\n"
            f"os.kill(os.getpid(), {int(sig)})\n"
            "time.sleep(30)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (128 + sig, "done", "")


def test_the_console_script_is_the_entry_point():
    """pyproject's `tokentrim` script calls `entry` (main, then the quiet shutdown), as `python -m` does."""
    import tomllib

    from tokentrim.app import cli

    scripts = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"
    ]["scripts"]
    assert scripts["tokentrim"] == "tokentrim.app.cli:entry" and callable(cli.entry)


# One writer per output ---------------------------------------------------------------------------------------------
def _holder(path: Path) -> subprocess.Popen:
    """Another process that claims `path` (as a `tokentrim` run writing it does) and waits."""
    code = f"import sys, time; from tokentrim.files import claim; claim({str(path)!r}); print('held', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_the_same_output_refuses_naming_the_first(tmp_path, capsys, monkeypatch):
    """Checked before any weights load; the first run's outputs are untouched."""
    monkeypatch.chdir(tmp_path)
    other = _holder(tmp_path / "o.mp4")
    try:
        code, err = run(TOY + ["--out", "o.mp4"], capsys)
        assert code == 2
        assert one_line(err) == (f"error: --out o.mp4 is being written by another tokentrim run (process "
                                 f"{other.pid}); wait for it to finish or choose another --out")  # fmt: skip
        assert sorted(p.name for p in tmp_path.iterdir()) == [".o.mp4.lock"]  # the other run's lock only
    finally:
        other.kill()
        other.wait()


def test_the_lock_of_a_killed_run_is_taken_over_and_removed(tmp_path):
    other = _holder(tmp_path / "o.json")
    other.kill()  # SIGKILL: no clean-up; its lock file stays, holding no lock
    other.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.json.lock"]
    write_json(tmp_path / "o.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


@pytest.mark.slow
def test_ranks_of_a_sharded_batch_share_the_out_dir(tmp_path, capsys, monkeypatch):
    """torchrun ranks write into one `--out-dir`, each its own prompts: rank 1 starts while rank 0 runs."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    out_dir = tmp_path / "batch"
    argv = ["generate", "--preset", "toy", "--prompts", str(prompts), "--out-dir", str(out_dir)]
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    rank0 = subprocess.Popen([sys.executable, "-m", "tokentrim.app.cli", *argv, "--latent-frames", "30"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lock = out_dir / ".0000_a_red_circle.mp4.lock"
        while not lock.exists() and rank0.poll() is None:
            time.sleep(0.05)
        assert rank0.poll() is None, rank0.communicate()
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        code, err = run(argv + ["--latent-frames", "30"], capsys)
        assert code == 0, err
        assert rank0.wait(timeout=600) == 0, rank0.communicate()
    finally:
        rank0.kill()
        rank0.wait()
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "0000_a_red_circle.json", "0000_a_red_circle.mp4", "0001_a_blue_square.json", "0001_a_blue_square.mp4"]  # fmt: skip


def test_claims_are_per_process_and_released(tmp_path):
    target = tmp_path / "new" / "deeper" / "x.json"
    assert claim(target) is True and claim(target) is False  # this process holds it already
    assert (tmp_path / "new" / "deeper" / ".x.json.lock").read_text().split()[0] == str(os.getpid())
    write_json(target, {"a": 1})  # the writer inside this process is not blocked by its own claim
    release(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]
    claim(tmp_path / "other" / "y.json")
    release(tmp_path / "other" / "y.json")
    assert not (tmp_path / "other").exists()  # folders made only for the claim go with it


def test_a_library_write_of_a_claimed_output_refuses(tmp_path):
    other = _holder(tmp_path / "t.json")
    try:
        with pytest.raises(
            UserError, match=f"being written by another tokentrim run \\(process {other.pid}\\)"
        ):
            write_json(tmp_path / "t.json", {})
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / "t.json").exists()


# Start images and videos -------------------------------------------------------------------------------------------
def test_tiny_and_non_rgb_start_images_are_warned_about(tmp_path, caplog):
    from PIL import Image

    from tokentrim.app.inputs import image_start

    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    Image.new("CMYK", (32, 32), (0, 100, 100, 0)).save(tmp_path / "print.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")  # exactly 4x: fine
    Image.new("RGBA", (16, 16)).save(tmp_path / "alpha.png")
    caplog.set_level("WARNING")
    messages = {}
    for name in ("dot.png", "print.jpg", "small.png", "alpha.png"):
        caplog.clear()
        start = image_start(tmp_path / name, (32, 32), block=3, temporal=1)
        assert start.frames.shape == (3, 32, 32, 3)
        messages[name] = [r.getMessage() for r in caplog.records]
    assert messages["dot.png"] == [f"the start image {tmp_path / 'dot.png'} (1x1) is upscaled 32x in height and "
                                   "32x in width to the model's 32x32 frame; expect a blurry start"]  # fmt: skip
    assert messages["print.jpg"] == [f"the start image {tmp_path / 'print.jpg'} is CMYK, not RGB: converted to "
                                     "RGB (colours may shift)"]  # fmt: skip
    assert messages["small.png"] == []
    assert messages["alpha.png"] == [f"the start image {tmp_path / 'alpha.png'} is RGBA, not RGB: its alpha "
                                     "channel is dropped"]  # fmt: skip


def test_cropping_a_tiny_image_is_warned_about_with_one_factor(tmp_path, caplog):
    from PIL import Image

    from tokentrim.app.inputs import image_start

    Image.new("RGB", (4, 2)).save(tmp_path / "strip.png")
    caplog.set_level("WARNING")
    image_start(tmp_path / "strip.png", (32, 32), block=3, temporal=1, mode="crop")
    assert [r.getMessage() for r in caplog.records] == [
        f"the start image {tmp_path / 'strip.png'} (4x2) is upscaled 16x to the model's 32x32 frame; expect a "
        "blurry start"
    ]


def test_a_non_video_is_refused_with_ffmpegs_reason_only(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    with pytest.raises(UserError) as caught:
        read_video(tmp_path / "notes.mp4")
    message = str(caught.value)
    assert message == (f"cannot read video {tmp_path / 'notes.mp4'} (invalid data found when processing input); "
                       "give a complete video file (mp4)")  # fmt: skip
    for banner in ("ffmpeg version", "Copyright", "configuration", "libavutil", "@ 0x"):
        assert banner not in message
