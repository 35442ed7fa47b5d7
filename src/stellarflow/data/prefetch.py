"""Read ahead in a background thread so that the model is not waiting on the disk.

:func:`prefetch` runs an iterator of chunks (HDF5 reads, validation) in one background
thread, ``depth`` items ahead of the consumer. The order of the items is unchanged, so
results do not depend on whether prefetching is on. While the consumer computes in PyTorch
(which releases the GIL) the reader thread decompresses and copies the next chunk; h5py
holds the GIL during a read, so the overlap is with compute, not between two reads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items`` in order, producing up to ``depth`` of them ahead in a thread.

    Args:
        items: an iterable whose production is slow (reads from disk).
        depth: how many items may wait in memory beyond the one being used; 0 disables
            the thread (plain iteration). Memory grows by ``depth`` items.

    An exception raised while producing an item is re-raised in the consumer at that item.
    Closing the generator early (``break``) stops the thread before it returns, so the
    source (e.g. an open HDF5 file) may be closed right after.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if depth == 0:
        yield from items
        return
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(_DONE)
        except BaseException as err:  # handed to the consumer, not lost in the thread
            ready.put(_Failure(err))

    thread = threading.Thread(target=produce, name="stellarflow-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()
