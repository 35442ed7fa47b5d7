"""Reading ahead in a thread changes nothing but the waiting."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from stellarflow.data.prefetch import prefetch


def test_items_arrive_in_order_whatever_the_depth() -> None:
    for depth in (0, 1, 3):
        assert list(prefetch(iter(range(50)), depth)) == list(range(50))


def test_a_producer_error_is_raised_in_the_consumer_at_that_item() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError("disk went away")

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1]


def test_stopping_early_stops_the_reader_thread() -> None:
    produced = []

    def items() -> Iterator[int]:
        for i in range(1000):
            produced.append(i)
            yield i

    before = threading.active_count()
    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    stream.close()
    assert threading.active_count() == before
    assert len(produced) <= 5  # read ahead by at most ~depth items


def test_negative_depth_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        list(prefetch([], -1))
