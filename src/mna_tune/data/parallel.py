"""Ordered work on both cores with bounded memory, for the data stages."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def default_processes() -> int:
    return min(2, os.cpu_count() or 1)


def ordered_map(func: Callable[[Any], Any], items: Iterable[Any], processes: int,
                passthrough: Callable[[Any], bool] = lambda item: False,
                initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Any]:
    """func(item) for each item, in input order, on `processes` forked workers, with at most
    2 x processes items in flight, so results never pile up beyond that. Items for which
    `passthrough` is true come out unchanged without visiting a worker."""
    if processes <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield item if passthrough(item) else func(item)
        return
    import multiprocessing

    window: deque = deque()
    with multiprocessing.get_context("fork").Pool(processes, initializer, initargs) as pool:
        for item in items:
            window.append((True, item) if passthrough(item) else (False, pool.apply_async(func, (item,))))
            while len(window) > 2 * processes:
                plain, head = window.popleft()
                yield head if plain else head.get()
        while window:
            plain, head = window.popleft()
            yield head if plain else head.get()
