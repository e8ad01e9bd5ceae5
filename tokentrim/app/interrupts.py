"""How a `tokentrim` command stops on Ctrl-C (SIGINT) or SIGTERM: one line (`interrupted`, status 130, or
`terminated`, 143), after the temporary files are removed (README, "Bad inputs and interruptions").

`handling()` (entered by `cli.main` before anything heavy is imported) installs `handler`: the first signal raises
KeyboardInterrupt or SystemExit(143), which unwinds through the writers' clean-up. Python may lose that exception:
a library that catches it while it is imported, or a destructor the signal landed in (Python then only reports
it, "Exception ignored in ..."). Such a report is muted, and `raise_if_received()` raises the signal again at the
next safe point (after the imports, between blocks). Standard library only: imported before torch.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

received: list[int] = []  # the interrupting signals of the running command


def handler(signum, frame):
    """SIGINT: KeyboardInterrupt; SIGTERM (a scheduler's kill, `timeout`): SystemExit(143). A second signal comes
    while the command is already stopping (Ctrl-C pressed twice): it is ignored, so that the clean-up is not cut
    short; a third stops the process at once, leaving what the next run on the same output removes (as after a
    kill)."""
    received.append(signum)
    if len(received) == 2:
        return
    if len(received) > 2:
        print(
            "stopped at once: the next run on this output removes what is left", file=sys.stderr, flush=True
        )
        os._exit(128 + received[0])
    _raise(signum)


def _raise(signum: int):
    if signum == signal.SIGTERM:
        raise SystemExit(128 + signum)
    raise KeyboardInterrupt


def raise_if_received() -> None:
    """At a safe point of a running command: a signal came, yet its exception was lost (swallowed by a library
    or raised inside a destructor): raise it now."""
    if received:
        _raise(signal.SIGTERM if signal.SIGTERM in received else signal.SIGINT)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """`handler` for SIGINT and SIGTERM (in the main thread), and destructor reports of its exceptions muted, while
    the block runs; what was there before is restored after."""
    received.clear()
    previous = (
        {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    report = sys.unraisablehook

    def unless_ours(unraisable) -> None:
        if not (received and issubclass(unraisable.exc_type, (KeyboardInterrupt, SystemExit))):
            report(unraisable)

    sys.unraisablehook = unless_ours
    try:
        yield
    finally:
        sys.unraisablehook = report
        for sig, old in previous.items():
            signal.signal(sig, old)


def release_cut_short(err: BaseException) -> None:
    """Free now, with destructor reports muted, what the signal cut short: an object interrupted mid-construction
    lives on in the traceback's frames and may fail in its destructor at exit (a progress bar stopped inside its
    `__init__` prints "Exception ignored in tqdm.__del__" after the one line)."""
    import gc
    import traceback

    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        seen: set[int] = set()
        while err is not None and id(err) not in seen:  # the exception and the ones it was raised during
            seen.add(id(err))
            traceback.clear_frames(err.__traceback__)  # frames still running (this one) are left alone
            err.__traceback__ = None
            err = err.__context__
        gc.collect()
    finally:
        sys.unraisablehook = hook


def stopped(signum: int) -> int:
    """The one line and exit status of a command stopped by a signal (SIGTERM raises SystemExit(143))."""
    if signum == signal.SIGTERM:
        print("terminated", file=sys.stderr)
        raise SystemExit(128 + signum)
    print("interrupted", file=sys.stderr)
    _forget_unhandled_interrupt()
    return 130


def _forget_unhandled_interrupt() -> None:
    """CPython remembers a KeyboardInterrupt that left Python code an extension module ran through `PyRun_*`
    (as some do while they import) even when it was handled later, and then ends a `python -m` process by SIGINT
    (status -2) instead of with the status `main` returns. Running an empty statement the same way clears it."""
    if sys.implementation.name == "cpython":
        import ctypes

        ctypes.pythonapi.PyRun_SimpleStringFlags(b"", None)


def quiet_shutdown() -> None:
    """For the rest of the process, once the command is over (its outputs complete, or removed): a signal ends it at
    once and quietly, instead of raising inside Python's shutdown (a traceback from a thread's clean-up); from the
    exit handlers on, when no Python code is left to stop, signals are ignored (Python would otherwise put back
    the default action, and a late Ctrl-C would kill the process instead of letting it exit with its status)."""

    def now(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(128 + signum)

    def ignore() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, now)
        atexit.register(ignore)  # the last registered: the first exit handler to run
