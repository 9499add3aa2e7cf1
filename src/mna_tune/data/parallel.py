"""Ordered work on both cores with bounded memory, for the data stages."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def default_processes() -> int:
    """Worker processes for the data stages: MNA_TUNE_DATA_PROCESSES, else up to 2. The test
    suite sets 1: forking a process that already runs many threads (servers, torch) can
    deadlock in the child, which a fresh `mna-tune <stage>` process never does."""
    configured = os.environ.get("MNA_TUNE_DATA_PROCESSES", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return min(2, os.cpu_count() or 1)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """A forked worker ends on SIGTERM (how a pool stops it) at once, whatever handler the
    parent had installed: a Python handler inherited from the parent would run the parent's
    exit code in the worker, and can hang it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def _fork_pool(processes: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()):
    import multiprocessing

    return multiprocessing.get_context("fork").Pool(processes, _start_worker, (initializer, initargs))


@contextlib.contextmanager
def worker_pool(processes: int) -> Iterator[Any]:
    """Forked workers to hand to ordered_map(pool=...) several times. Fork them early, while the
    stage is small: a worker forked later maps (and is counted as resident for) every page the
    stage then holds, though it never touches them. None for one process."""
    if processes <= 1:
        yield None
        return
    with _fork_pool(processes) as pool:
        yield pool


def ordered_map(
    func: Callable[[Any], Any],
    items: Iterable[Any],
    processes: int,
    passthrough: Callable[[Any], bool] = lambda item: False,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
    pool: Any = None,
) -> Iterator[Any]:
    """func(item) for each item, in input order, on `processes` forked workers (or on `pool`,
    from worker_pool), with at most 2 x processes items in flight, so results never pile up
    beyond that. Items for which `passthrough` is true come out unchanged without visiting a
    worker."""
    if pool is None and processes <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield item if passthrough(item) else func(item)
        return
    window: deque = deque()
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(_fork_pool(processes, initializer, initargs))
        for item in items:
            window.append((True, item) if passthrough(item) else (False, pool.apply_async(func, (item,))))
            while len(window) > 2 * processes:
                plain, head = window.popleft()
                yield head if plain else head.get()
        while window:
            plain, head = window.popleft()
            yield head if plain else head.get()
