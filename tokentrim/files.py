"""Atomic file writing, shared by videos, frames, decision logs, tables and reports.

Every writer writes to a temporary name in the destination folder, `.<name>.tmp-<pid>-<random>`, and renames it
when complete, so an interrupted run never leaves a half-written file under the final name. "Complete" is
checked: the writer's close (and ffmpeg's exit status, in `tokentrim.video`) must succeed and the file is
flushed to the disk (fsync) before the rename; a write the file system refuses (a full disk, a quota, a
read-only or failing device) removes the temporary and is one `UserError`: "no space left on device while
writing out.mp4; nothing was written". A process killed outright (SIGKILL) cannot clean up: the next write of
the same output removes temporaries whose process no longer runs. Finished files get the usual permissions
(0666 minus the umask), like any file the user creates.

One output, one writer: a process claims each output it writes with a lock file beside it, `.<name>.lock`
(holding an exclusive `flock` and the process id). A second tokentrim process that wants the same output
refuses with one line naming the first; the lock file is removed when the claim ends, and a lock file left by
a killed process holds no lock, so the next run takes it over and removes it.
`check_output` tells, before any work, whether an output can be written at all, and claims it.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import glob
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from tokentrim.errors import UserError

TMP_TAG = ".tmp-"
LOCK_SUFFIX = ".lock"
# What the file system says when it refuses a write: the user's to fix (free space, a quota, a file-size limit,
# a read-only or failing device, permissions changed during the run), never a bug.
REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


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


def refused_errno(err: BaseException) -> int | None:
    """The errno of a write the file system refused, found in `err` or the exceptions behind it (libraries
    that write in native code report it in their message: safetensors' `(os error 28)`), else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        code = err.errno if isinstance(err, OSError) else None
        if code is None:
            found = re.search(r"\[Errno (\d+)\]|\(os error (\d+)\)|Os \{ code: (\d+)", str(err))
            code = int(next(g for g in found.groups() if g)) if found else None
        if code in REFUSED:
            return code
        err = err.__cause__ or err.__context__
    return None


def write_refused(path: str | os.PathLike, code: int) -> UserError:
    """The one-line error for an output the file system refused to take."""
    reason = os.strerror(code)
    return UserError(f"{reason[:1].lower()}{reason[1:]} while writing {path}; nothing was written")


def _kind(path: str | os.PathLike) -> str:
    """What an existing path is, in words."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a pipe or socket"


def _flush_to_disk(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def refusals_named(path: str | os.PathLike) -> Iterator[None]:
    """Turn a refused write inside the block into `write_refused(path)`; anything else passes unchanged. For a
    writer that fills an `atomic_path` temporary while other outputs' temporaries are open around it: the
    refusal then names the output being written, not the one whose block it passes through."""
    try:
        yield
    except Exception as err:  # an interrupt (BaseException) keeps its own path
        code = None if isinstance(err, UserError) else refused_errno(err)
        if code is None:
            raise
        raise write_refused(path, code) from err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds and the file is on
    the disk. A refused write (full disk, ...) is a `UserError`; the temporary never outlives the block."""
    path = Path(path)
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"{path} is {_kind(path)}, not a file; give a file name")
    with _writing(path):
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=suffix or path.suffix, dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            _flush_to_disk(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` (a folder) only if the block succeeds. Every
    file in it was closed by its writer (a refused write raises there), so a refusal is a `UserError` too."""
    path = Path(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path} is {_kind(path)}, not a folder; give a folder name")
    with _writing(path):
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


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """What every atomic write does around its temporary: refusals named after `path`, its folder made, the
    output claimed (and released after, if this write claimed it), a killed run's leftovers removed."""
    with refusals_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        mine = claim(path)
        try:
            remove_stale(path)
            yield
        finally:
            if mine:
                release(path)


# One writer per output ------------------------------------------------------------------------------------------
# output -> (the process, its locked fd, the lock file, folders made for the claim)
_claims: dict[Path, tuple[int, int, Path, list[Path]]] = {}
_claims_lock = threading.Lock()


def _key(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path))


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode("utf-8", "replace").split()
    return f"process {text[0]}" if text and text[0].isdigit() else "a process that is starting"


def claim(path: str | os.PathLike, what: str = "the output") -> bool:
    """Claim `path` (a file or a folder to be written) for this process until `release`: a second tokentrim
    process claiming it gets a `UserError` naming this one. True if this call took the claim, False if this
    process already held it. Missing parent folders are made and removed again on release if still empty.
    Without `fcntl` (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    key = _key(path)
    with _claims_lock:
        if key in _claims and _claims[key][0] == os.getpid():
            return False
        made = []
        folder = key.parent
        while not folder.exists():
            made.append(folder)
            folder = folder.parent
        for folder in reversed(made):
            folder.mkdir()
        lock = key.parent / f".{key.name}{LOCK_SUFFIX}"
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                _remove_empty(made)
                raise UserError(f"{what} {path} is being written by another tokentrim run ({holder}); wait "
                                f"for it to finish or choose another {what}") from None  # fmt: skip
            try:  # the previous holder may have removed the file between our open and our lock
                current = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        with contextlib.suppress(OSError):  # who holds it, for the other run's message (a full disk: unsaid)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {os.path.basename(sys.argv[0] or 'python')}\n".encode())
        _claims[key] = (os.getpid(), fd, lock, made)
        return True


def release(path: str | os.PathLike) -> None:
    """End this process's claim on `path` (no-op if it holds none): this process's leftover temporaries of it go,
    then the lock file, then the lock."""
    with _claims_lock:
        held = _claims.pop(_key(path), None)
    if held is None:
        return
    owner, fd, lock, made = held
    if owner != os.getpid():  # a forked child inherited the table: the claim is its parent's
        return
    key = _key(path)
    # temporaries of this process an interrupt left behind (one that landed between their creation and the
    # writer's clean-up), then the lock file, then the lock
    for tmp in key.parent.glob(f"{glob.escape(_tmp_prefix(key))}*"):
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
    with contextlib.suppress(OSError):
        os.remove(lock)
    os.close(fd)
    _remove_empty(made)


_command = threading.local()  # set while a command runs: `check_output`'s claims last until its end


@contextlib.contextmanager
def command_claims() -> Iterator[None]:
    """The scope of one command (the CLI's `main`): the outputs `check_output` approves stay claimed until the
    block ends, then every claim of this process goes. Outside it `check_output` only checks that no other
    process holds the output, and the writers claim each output while they write it."""
    _command.active = True
    try:
        yield
    finally:
        _command.active = False
        release_all()


def release_all() -> None:
    """End every claim of this process (the command line does this on exit; so does `atexit`)."""
    for key in reversed(list(_claims)):  # the latest first: folders made for earlier claims empty last
        release(key)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


atexit.register(release_all)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    """Indented JSON with a trailing newline, written atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def check_output(path: str | os.PathLike, what: str, folder: bool = False, shared: bool = False) -> Path:
    """Raise one `UserError` (naming `what`, e.g. the option) unless `path` can be written: a file (or, with
    `folder`, a folder) there, created with its missing parent folders, and no other tokentrim process writing
    it. Inside `command_claims` it stays claimed for this process until the command ends (nothing else is left),
    unless it is `shared`: a folder several processes write into (a sharded batch's `--out-dir`)."""
    path = Path(path)
    if path.exists() and (path.is_dir() != folder or not (path.is_dir() or path.is_file())):
        # a device (`--out /dev/null`), a pipe or a socket would be replaced by the finished file
        raise UserError(
            f"{what} {path} is {_kind(path)}; give {'a folder' if folder else 'a file name'} there instead"
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
    if not shared and claim(path, what) and not getattr(_command, "active", False):
        release(path)  # no command to hold it for: the check is all
    return path
