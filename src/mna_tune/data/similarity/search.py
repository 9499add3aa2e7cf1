"""The bounded pair search: prefix filtering (AllPairs) over the items, planned against
PAIR_BUDGET before it starts, run in blocks on threads (see the package docstring)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .arrays import _mix, _order, _ragged, _unique
from .items import N_FEATURES, Items

CHUNK_PAIRS = 50_000  # candidate pairs whose overlap is computed at once


PAIR_BUDGET = 60_000_000  # candidate pairs made and compared, per search (well under 1 us each)


BLOCK_PAIRS = 500_000  # candidate pairs made per block (bounds the memory of a block)


WINDOW, PIVOTS = 16, 16  # per item of a capped list, at most (fewer when the budget is tight)


PREFIX_CHUNK = 1_000_000  # n-gram entries sorted at once while choosing prefixes


SKETCH = 64  # hash buckets of the overlap bound (a power of two)


@dataclass
class SearchStats:
    items: int = 0
    candidate_pairs: int = 0  # distinct item pairs whose similarity was computed
    skipped_pairs: int = 0  # pairs on a capped list not compared through it (per list)
    capped_lists: int = 0
    largest_list: int = 0
    cap: int | None = None  # lists longer than this were capped
    window: int = 0
    pivots: int = 0

    @property
    def exact(self) -> bool:
        return self.skipped_pairs == 0

    def as_metrics(self) -> dict:
        return {
            "exact": self.exact,
            "distinct_questions": self.items,
            "candidate_pairs": self.candidate_pairs,
            "candidate_pairs_skipped": self.skipped_pairs,
            "capped_ngram_lists": self.capped_lists,
            "largest_ngram_list": self.largest_list,
        }


@dataclass
class _Plan:
    """Everything the search threads read (shared by reference, never copied)."""

    threshold: float
    sizes: np.ndarray  # item sizes
    pre_indptr: np.ndarray  # prefix entries per item (CSR order = item order)
    position: np.ndarray  # for each prefix entry, its place in `members`
    members: np.ndarray  # items of every list, list after list
    list_start: np.ndarray  # per list, its first place in `members` (plus the end)
    capped: np.ndarray  # per list, capped or not
    pivot_max: np.ndarray  # per list, its PIVOTS-th smallest item (capped lists)
    window: int
    buckets: np.ndarray  # per item, how many of its n-grams fall in each of SKETCH buckets
    keep_all: bool = False  # the block workers return every compared pair, not only the near ones
    matrix: Any = None  # the items' scipy CSR matrix
    work: np.ndarray = field(default_factory=lambda: np.zeros(0))


_PLAN: list[_Plan] = []


def _prefixes(items: Items, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each item's rarest n-grams (rarest first, ties by id), as (prefix indptr, n-grams), and
    per item the two smallest min-hash values of its prefix and the n-gram of the smallest."""
    sizes = items.sizes
    document_frequency = np.zeros(N_FEATURES, np.int64)
    for start in range(0, len(items.indices), PREFIX_CHUNK):  # bincount copies its input as int64: in pieces
        document_frequency += np.bincount(items.indices[start : start + PREFIX_CHUNK], minlength=N_FEATURES)
    keep = np.maximum(sizes - np.ceil(threshold * threshold * sizes - 1e-9).astype(np.int64) + 1, 0)
    keep = np.minimum(keep, sizes)
    pre_indptr = np.concatenate([np.zeros(1, np.int64), np.cumsum(keep)])
    features = np.empty(pre_indptr[-1], np.int32)
    smallest = np.full(items.count, np.iinfo(np.uint64).max, np.uint64)
    second = smallest.copy()
    smallest_feature = np.full(items.count, -1, np.int64)
    start = 0
    while start < items.count:  # a few million entries at a time
        end = int(np.searchsorted(items.indptr, items.indptr[start] + PREFIX_CHUNK, side="right"))
        end = min(max(end - 1, start + 1), items.count)
        base = items.indptr[start]
        segment = items.indices[base : items.indptr[end]]
        owner = np.repeat(np.arange(start, end), sizes[start:end])
        order = _order(
            (owner - start, end - start), (document_frequency[segment], items.count), (segment, N_FEATURES - 1)
        )
        rank = np.arange(len(segment)) - (items.indptr[owner] - base)
        chosen = rank < keep[owner]
        chosen_features = segment[order][chosen]
        features[pre_indptr[start] : pre_indptr[end]] = chosen_features
        hashed = _mix(chosen_features, 3)
        owners = np.flatnonzero(keep[start:end]) + start  # items with a prefix, in order
        if len(owners):
            bounds = pre_indptr[owners] - pre_indptr[start]
            low = np.minimum.reduceat(hashed, bounds)
            is_low = hashed == np.repeat(low, keep[owners])
            smallest[owners] = low
            smallest_feature[owners] = np.maximum.reduceat(np.where(is_low, chosen_features, -1), bounds)
            second[owners] = np.minimum.reduceat(np.where(is_low, np.iinfo(np.uint64).max, hashed), bounds)
        start = end
    return pre_indptr, features, smallest, second, smallest_feature


def _lists(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A counting sort of the prefix entries by n-gram, stable (so by item within an n-gram),
    PREFIX_CHUNK entries at a time: (entry at each place, each list's first place plus the end,
    each list's n-gram)."""
    index = np.int32 if len(features) < 2**31 else np.int64
    counts = np.zeros(N_FEATURES, np.int64)
    for start in range(0, len(features), PREFIX_CHUNK):
        counts += np.bincount(features[start : start + PREFIX_CHUNK], minlength=N_FEATURES)
    present = np.flatnonzero(counts)
    begin = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])
    fill = begin[:-1].copy()  # the next free place of each n-gram's list
    order = np.empty(len(features), index)
    for start in range(0, len(features), PREFIX_CHUNK):
        chunk = features[start : start + PREFIX_CHUNK]
        by_feature = np.argsort(chunk, kind="stable")
        ordered = chunk[by_feature]
        new = np.concatenate([[True], ordered[1:] != ordered[:-1]])
        group_start = np.flatnonzero(new)
        rank = np.arange(len(chunk)) - np.repeat(group_start, np.diff(np.concatenate([group_start, [len(chunk)]])))
        order[fill[ordered] + rank] = by_feature + start
        fill += np.bincount(chunk, minlength=N_FEATURES)
    return order, np.concatenate([begin[present], [len(features)]]), present.astype(np.int32)


def _plan_caps(list_sizes: np.ndarray, budget: int) -> tuple[int | None, int]:
    """(cap, comparisons per entry of a capped list): lists longer than cap are capped, as few
    as the budget allows, and the rest of the budget goes to the capped lists' comparisons.
    None: every list is searched in full (exact)."""
    if int((list_sizes * (list_sizes - 1) // 2).sum()) <= budget:
        return None, 0
    ordered = np.sort(list_sizes)
    cumulative = np.concatenate([[0], np.cumsum(ordered * (ordered - 1) // 2)])  # exact cost of the k smallest
    tail = np.concatenate([np.cumsum(ordered[::-1])[::-1], [0]])  # entries of the others
    caps = np.concatenate([[0], _unique(ordered)])
    exact = np.searchsorted(ordered, caps, side="right")  # lists searched in full under each cap
    for per_entry in (WINDOW + PIVOTS, 2):
        fits = np.flatnonzero(cumulative[exact] + per_entry * tail[exact] <= budget)
        if len(fits):
            k = exact[fits[-1]]
            if per_entry == 2:
                per_entry = int(min(WINDOW + PIVOTS, max(2, (budget - cumulative[k]) // max(int(tail[k]), 1))))
            return int(caps[fits[-1]]), per_entry
    return 0, 2  # even two comparisons per entry exceed the budget: the least the search does


def _plan(items: Items, threshold: float, budget: int, stats: SearchStats) -> _Plan:
    pre_indptr, features, smallest, second, smallest_feature = _prefixes(items, threshold)
    order, list_start, list_feature = _lists(features)  # by n-gram, then item: the lists
    del features
    members = np.empty(len(order), np.int32)  # each place's item, PREFIX_CHUNK places at a time
    for start in range(0, len(order), PREFIX_CHUNK):
        members[start : start + PREFIX_CHUNK] = (
            np.searchsorted(pre_indptr, order[start : start + PREFIX_CHUNK], side="right") - 1
        )
    list_sizes = np.diff(list_start)
    cap, per_entry = _plan_caps(list_sizes, budget)
    capped = list_sizes > cap if cap is not None else np.zeros(len(list_sizes), bool)
    window = per_entry - per_entry // 2
    pivots = per_entry // 2
    pivot_max = np.full(len(list_sizes), -1, np.int64)
    if capped.any():
        capped_lists = np.flatnonzero(capped)
        sizes = list_sizes[capped_lists]
        # lists are sorted by item: the PIVOTS-th member is the largest pivot
        pivot_max[capped_lists] = members[list_start[capped_lists] + np.minimum(pivots, sizes) - 1]
        # reorder each capped list by a min-hash of the item's prefix without the list's own n-gram,
        # PREFIX_CHUNK entries at a time
        ends = np.cumsum(sizes)
        first = 0
        while first < len(capped_lists):
            last = max(first + 1, int(np.searchsorted(ends, (ends[first - 1] if first else 0) + PREFIX_CHUNK)))
            group = capped_lists[first:last]
            which, spots = _ragged(list_start[group], sizes[first:last])
            member = members[spots]
            key = np.where(smallest_feature[member] == list_feature[group[which]], second[member], smallest[member])
            reorder = _order((which, len(group)), (key >> np.uint64(24), 2**40 - 1))  # stable: the item breaks ties
            members[spots] = member[reorder]
            order[spots] = order[spots][reorder]
            del which, spots, member, key, reorder
            first = last
        total = sizes * (sizes - 1) // 2  # int64: fine up to 4 billion items in one list
        near = np.minimum(sizes - 1, window)
        by_window = near * sizes - near * (near + 1) // 2
        pivot_count = np.minimum(sizes, pivots)
        by_pivot = pivot_count * (sizes - 1) - pivot_count * (pivot_count - 1) // 2
        stats.skipped_pairs = int(np.maximum(0, total - by_window - by_pivot).sum())
        stats.capped_lists = len(capped_lists)
    stats.items, stats.cap, stats.window, stats.pivots = items.count, cap, window, pivots
    stats.largest_list = int(list_sizes.max()) if len(list_sizes) else 0
    position = np.empty(len(order), order.dtype)  # each entry's place: the inverse of order
    for start in range(0, len(order), PREFIX_CHUNK):
        position[order[start : start + PREFIX_CHUNK]] = np.arange(start, min(start + PREFIX_CHUNK, len(order)))
    del order
    plan = _Plan(
        threshold, items.sizes, pre_indptr, position, members, list_start, capped, pivot_max, window, _sketch(items)
    )
    plan.work = _work_per_item(plan)
    return plan


def _sketch(items: Items) -> np.ndarray:
    """Per item, its n-grams counted in SKETCH hash buckets. Two items share at most
    sum(min(count_a, count_b)) n-grams, a cheap bound that rules most candidates out."""
    out = np.zeros((items.count, SKETCH), np.uint8)
    step = max(1, PREFIX_CHUNK // SKETCH)
    for start in range(0, items.count, step):
        end = min(start + step, items.count)
        segment = items.indices[items.indptr[start] : items.indptr[end]]
        owner = np.repeat(np.arange(end - start), items.sizes[start:end])
        bucket = (_mix(segment, 5) & np.uint64(SKETCH - 1)).astype(np.int64)
        counts = np.bincount(owner * SKETCH + bucket, minlength=(end - start) * SKETCH)
        out[start:end] = np.minimum(counts, 255).reshape(end - start, SKETCH)
    return out


def _lists_of(plan: _Plan, places: np.ndarray) -> np.ndarray:
    return np.searchsorted(plan.list_start, places, side="right") - 1


def _entry_work(plan: _Plan, entries: np.ndarray) -> np.ndarray:
    """Candidate pairs each prefix entry makes with later items (an upper bound)."""
    places = plan.position[entries]
    lists = _lists_of(plan, places)
    ends = plan.list_start[lists + 1]
    capped = plan.capped[lists]
    is_pivot = capped & (plan.members[places] <= plan.pivot_max[lists])
    return np.where(capped, 2 * plan.window + np.where(is_pivot, ends - plan.list_start[lists], 0), ends - places - 1)


def _work_per_item(plan: _Plan) -> np.ndarray:
    work = np.zeros(len(plan.sizes))
    for start in range(0, int(plan.pre_indptr[-1]), PREFIX_CHUNK):  # PREFIX_CHUNK entries at a time
        entries = np.arange(start, min(start + PREFIX_CHUNK, int(plan.pre_indptr[-1])))
        owner = np.searchsorted(plan.pre_indptr, entries, side="right") - 1
        work += np.bincount(owner, weights=_entry_work(plan, entries), minlength=len(plan.sizes))
    return work


def _entry_candidates(plan: _Plan, entries: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """Codes (left * items + right, left < right) of the candidates some prefix entries make."""
    places = plan.position[entries]
    lists = _lists_of(plan, places)
    starts, ends = plan.list_start[lists], plan.list_start[lists + 1]
    capped = plan.capped[lists]
    lefts, rights = [], []
    exact = ~capped  # every later member (lists are sorted by item)
    which, where = _ragged(places[exact] + 1, ends[exact] - places[exact] - 1)
    lefts.append(anchor[exact][which])
    rights.append(plan.members[where])
    if capped.any():
        c_anchor, c_place, c_start, c_end = anchor[capped], places[capped], starts[capped], ends[capped]
        for step in range(1, plan.window + 1):  # neighbours in min-hash order, both sides
            for near in (c_place - step, c_place + step):
                inside = (near >= c_start) & (near < c_end)
                lefts.append(c_anchor[inside])
                rights.append(plan.members[near[inside]])
        pivot = c_anchor <= plan.pivot_max[lists[capped]]
        which, where = _ragged(c_start[pivot], c_end[pivot] - c_start[pivot])
        lefts.append(c_anchor[pivot][which])
        rights.append(plan.members[where])
    left, right = np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64)
    later = right > left
    return _unique(left[later] * len(plan.sizes) + right[later])


def _block_candidates(plan: _Plan, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct candidate pairs (left < right) whose left item is in [first, last), made a
    piece of at most about BLOCK_PAIRS at a time (an item that is a pivot of long lists makes
    many)."""
    entries = np.arange(plan.pre_indptr[first], plan.pre_indptr[last])
    anchor = np.repeat(np.arange(first, last), np.diff(plan.pre_indptr[first : last + 1]))
    cumulative = np.cumsum(_entry_work(plan, entries))
    pieces, start = [], 0
    while start < len(entries):
        base = cumulative[start - 1] if start else 0
        end = min(max(int(np.searchsorted(cumulative, base + BLOCK_PAIRS, side="right")), start + 1), len(entries))
        pieces.append(_entry_candidates(plan, entries[start:end], anchor[start:end]))
        start = end
    codes = pieces[0] if len(pieces) == 1 else _unique(np.concatenate(pieces)) if pieces else np.zeros(0, np.int64)
    return codes // len(plan.sizes), codes % len(plan.sizes)


def _search_block(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Compare the candidates of one block of items: (left, right, similarity, at or above the
    threshold, candidates), the pairs below the threshold left out unless the plan keeps them."""
    plan = _PLAN[0]
    left, right = _block_candidates(plan, *bounds)
    candidates = len(left)
    small, large = np.minimum(plan.sizes[left], plan.sizes[right]), np.maximum(plan.sizes[left], plan.sizes[right])
    possible = small >= plan.threshold * plan.threshold * large - 1e-9  # cos <= sqrt(small / large)
    left, right = left[possible], right[possible]
    similarity = np.zeros(len(left), np.float64)
    for start in range(0, len(left), CHUNK_PAIRS):
        a, b = left[start : start + CHUNK_PAIRS], right[start : start + CHUNK_PAIRS]
        if plan.keep_all:  # every similarity is wanted
            worth = np.ones(len(a), bool)
        else:
            need = np.sqrt(plan.sizes[a] * plan.sizes[b].astype(np.float64)) * plan.threshold - 1e-6
            worth = np.minimum(plan.buckets[a], plan.buckets[b]).sum(axis=1) >= need  # the others cannot reach it
            a, b = a[worth], b[worth]
        overlap = np.asarray(plan.matrix[a].multiply(plan.matrix[b]).sum(axis=1)).ravel()
        spots = np.flatnonzero(worth) + start
        similarity[spots] = overlap / np.sqrt(plan.sizes[a] * plan.sizes[b])
    similarity = np.round(similarity, 4)
    near = similarity >= plan.threshold - 1e-9
    if not plan.keep_all:
        left, right, similarity, near = left[near], right[near], similarity[near], near[near]
    return left.astype(np.int32), right.astype(np.int32), similarity.astype(np.float32), near, candidates


def _blocks(work: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive item ranges of about BLOCK_PAIRS candidate pairs each."""
    cumulative = np.cumsum(work)
    bounds, start = [], 0
    while start < len(work):
        base = cumulative[start - 1] if start else 0.0
        end = int(np.searchsorted(cumulative, base + BLOCK_PAIRS, side="right"))
        end = min(max(end, start + 1), len(work))
        bounds.append((start, end))
        start = end
    return bounds


def _threaded_map(func, items: Iterable, threads: int) -> Iterator:
    """func(item) for each item, in order, on `threads` threads with at most 2 x threads in
    flight. The blocks' work is numpy and scipy, which release the GIL, and threads share
    the plan: no copy, no pickling, one process's memory."""
    if threads <= 1:
        yield from map(func, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    window: deque = deque()
    with ThreadPoolExecutor(threads) as pool:
        for item in items:
            window.append(pool.submit(func, item))
            while len(window) > 2 * threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def compared_pairs(
    items: Items,
    threshold: float,
    budget: int | None = None,
    threads: int = 1,
    stats: SearchStats | None = None,
    keep_all: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Blocks of (left, right, similarity, near) for the item pairs the search found at or above
    `threshold` (every pair it compared with `keep_all`; `near` says which reach it): left <
    right, each pair once. Every pair at or above the threshold is among them when the search is
    exact (stats.exact); see the module docstring for the bounded case. Similarities are rounded
    to 4 places (kept as float32: print them with round(float(value), 4))."""
    stats = stats if stats is not None else SearchStats()
    budget = PAIR_BUDGET if budget is None else budget
    if items.count < 2:
        stats.items = items.count
        return
    plan = _plan(items, threshold, budget, stats)
    plan.keep_all = keep_all
    plan.matrix = items.matrix()
    _PLAN[:] = [plan]  # the search threads read it
    try:
        for left, right, similarity, near, candidates in _threaded_map(_search_block, _blocks(plan.work), threads):
            stats.candidate_pairs += candidates
            yield left, right, similarity, near
    finally:
        _PLAN.clear()
