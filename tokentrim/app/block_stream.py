"""`BlockStream`: `run_video` (which reports finished blocks through a callback) turned into a sequence that a
reader pulls block by block, for live displays.

The run happens in a worker thread that works only while the reader waits for the next block, so two streams
alternate block by block on one device, and closing a stream stops its run at the next block boundary.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from tokentrim.app.generate import BlockEvent, VideoResult


class Cancelled(Exception):
    """Raised from a run's block callback to abort it (the Cancel button)."""


class BlockStream:
    """`run_video` in a worker thread, read as a sequence of `BlockEvent`s.

    The worker runs only while the reader waits in `next_block()`; it pauses at the end of every block. So two
    streams alternate block by block on one device, and `close()` stops a run at its next block boundary: the
    worker's block callback raises `Cancelled`, which unwinds the pipeline like any error."""

    def __init__(self, start: Callable[[Callable[[BlockEvent], None]], VideoResult]):
        self._start = start
        self._turn = threading.Semaphore(0)
        self._events: queue.Queue = queue.Queue()
        self._stop = False
        self._done = False
        self.result: VideoResult | None = None
        self._thread = threading.Thread(target=self._work, name="tokentrim-block-stream", daemon=True)
        self._thread.start()

    def _wait_for_turn(self) -> None:
        self._turn.acquire()
        if self._stop:
            raise Cancelled

    def _on_block(self, event: BlockEvent) -> None:
        # The hook appends to one list as the run goes on: hand over a copy of the decisions so far.
        self._events.put(("block", BlockEvent(event.start, event.latents, list(event.records))))
        self._wait_for_turn()

    def _work(self) -> None:
        try:
            self._wait_for_turn()
            self._events.put(("done", self._start(self._on_block)))
        except Cancelled:
            self._events.put(("cancelled", None))
        except BaseException as err:  # the reader re-raises it in its own thread
            self._events.put(("error", err))

    def next_block(self) -> BlockEvent | None:
        """The next finished block, or None once the run is complete (`result` is then set); the run's error
        is raised here."""
        if self._done:
            return None
        self._turn.release()
        kind, value = self._events.get()
        if kind == "block":
            return value
        self._done = True
        self._thread.join()
        if kind == "error":
            raise value
        assert kind == "done", "only close() cancels a stream"
        self.result = value
        return None

    def close(self) -> None:
        """Stop the run if it is still going and wait until its worker has unwound."""
        if self._done:
            return
        self._done, self._stop = True, True
        self._turn.release()
        self._thread.join()
