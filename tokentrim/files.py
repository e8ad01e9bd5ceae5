"""Atomic file writing, shared by videos, frames, decision logs, tables and reports.

Every writer writes to a temporary name in the destination folder, `.<name>.tmp-<pid>-<random>`, and renames it
when complete, so an interrupted run never leaves a half-written file under the final name. A process killed
outright (SIGKILL) cannot clean up: the next write of the same output removes temporaries whose process no
longer runs. Finished files get the usual permissions (0666 minus the umask), like any file the user creates.
`check_output` tells, before any work, whether an output can be written at all.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tokentrim.errors import UserError

TMP_TAG = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}{TMP_TAG}{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `path` left by processes that no longer run; returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{TMP_TAG}*"):
        pid = tmp.name[len(path.name) + 1 + len(TMP_TAG) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` (a folder) only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    """Indented JSON with a trailing newline, written atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def check_output(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Raise one `UserError` (naming `what`, e.g. the option) unless `path` can be written: a file (or, with
    `folder`, a folder) there, created with its missing parent folders. Nothing is left behind by the check."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise UserError(
            f"{what} {path} is {kind}; give {'a folder' if folder else 'a file name'} there instead"
        )
    ancestor = path if folder else path.parent
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise UserError(f"{what} {path}: {ancestor} is a file, not a folder; choose another {what}")
    try:  # the only reliable test (permissions, read-only or virtual file systems, also for root)
        os.rmdir(tempfile.mkdtemp(prefix=".tokentrim-probe-", dir=ancestor))
    except OSError as err:
        raise UserError(
            f"{what} {path} cannot be written ({err.strerror} in {ancestor}); choose another {what}"
        ) from None
    return path
