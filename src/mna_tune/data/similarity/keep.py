"""What the stages keep of the compared pairs: merge's greedy collapse (`greedy_keepers`),
split's connected groups (`near_groups`), and the few best neighbours per item."""

from __future__ import annotations

import numpy as np

from .arrays import _order, _unique
from .items import Items
from .search import SearchStats, compared_pairs

NEAR_PAIRS = 10_000_000  # near pairs merge holds in full; beyond, a few per item (greedy_keepers)


class BestNeighbours:
    """For each item, the `size` best other items offered: by similarity (highest first, then
    the earliest item) or by item alone (the earliest first). `offered` counts all offers, so
    overflowing lists are known."""

    def __init__(self, count: int, size: int, earliest: bool = False):
        self.size, self.earliest = size, earliest
        self.other = np.full((count, size), -1, np.int32)
        self.similarity = np.zeros((count, size), np.float32)
        self.offered = np.zeros(count, np.int64)

    def offer(self, item: np.ndarray, other: np.ndarray, similarity: np.ndarray) -> None:
        if not len(item):
            return
        self.offered += np.bincount(item, minlength=len(self.offered))
        touched = _unique(item)
        held = self.other[touched] >= 0
        all_item = np.concatenate([np.repeat(touched, self.size)[held.ravel()], item])
        all_other = np.concatenate([self.other[touched][held], other])
        all_similarity = np.concatenate([self.similarity[touched][held], similarity.astype(np.float32)])
        count = len(self.offered)
        if self.earliest:
            order = _order((all_item, count), (all_other, count))
        else:
            order = _order((all_item, count), (_similarity_rank(all_similarity), 10_000), (all_other, count))
        all_item, all_other, all_similarity = all_item[order], all_other[order], all_similarity[order]
        group_start = np.flatnonzero(np.concatenate([[True], all_item[1:] != all_item[:-1]]))
        rank = np.arange(len(all_item)) - np.repeat(
            group_start, np.diff(np.concatenate([group_start, [len(all_item)]]))
        )
        keep = rank < self.size
        self.other[touched] = -1
        self.other[all_item[keep], rank[keep]] = all_other[keep]
        self.similarity[all_item[keep], rank[keep]] = all_similarity[keep]

    def of(self, item: int) -> list[tuple[int, float]]:
        return [(int(o), float(s)) for o, s in zip(self.other[item], self.similarity[item]) if o >= 0]

    def overflowed(self) -> np.ndarray:
        return self.offered > self.size


def _similarity_rank(similarity: np.ndarray) -> np.ndarray:
    """0 for similarity 1.0 up to 10000 for 0.0: sorting by it puts the most similar first."""
    return 10_000 - np.rint(np.asarray(similarity, np.float64) * 10_000).astype(np.int64)


def _adjacency(
    count: int, item: np.ndarray, other: np.ndarray, similarity: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of each item's neighbours, the most similar first, then the earliest."""
    order = _order((item, count), (_similarity_rank(similarity), 10_000), (other, count))
    pointer = np.concatenate([np.zeros(1, np.int64), np.cumsum(np.bincount(item, minlength=count))])
    return pointer, other[order], similarity[order]


def greedy_keepers(
    items: Items, threshold: float, budget: int | None = None, threads: int = 1, neighbours: int = 8
) -> tuple[np.ndarray, np.ndarray, SearchStats, int]:
    """Greedy near-duplicate collapse over the texts in order: a text goes when its item is at
    least `threshold` similar to a kept text's item (identical items: 1.0), to the most similar
    kept earlier text (the earliest on ties). Returns, per text, the text it collapses to (-1:
    kept) and the similarity; the search stats; and how many items had their neighbour lists
    cut (then only the `neighbours` most similar and the `neighbours` earliest are kept; their
    decision may differ from the unbounded greedy). Lists are cut only when more than
    NEAR_PAIRS near pairs are found; on ordinary data the result is the exact greedy."""
    stats = SearchStats()
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    held = 0
    cut_lists: tuple[BestNeighbours, BestNeighbours] | None = None  # the best and the earliest few
    for left, right, similarity, _ in compared_pairs(items, threshold, budget, threads, stats):
        found.append(
            (
                np.concatenate([left, right]).astype(np.int64),
                np.concatenate([right, left]).astype(np.int64),
                np.concatenate([similarity, similarity]),
            )
        )
        held += len(left)
        if held > NEAR_PAIRS:  # too many to hold: keep only the best and the earliest few per item
            if cut_lists is None:
                cut_lists = (
                    BestNeighbours(items.count, neighbours),
                    BestNeighbours(items.count, neighbours, earliest=True),
                )
            batch = [np.concatenate(part) for part in zip(*found)]
            for kept in cut_lists:
                kept.offer(*batch)
            found, held = [], 0
    cut = 0
    if cut_lists is None:
        item, other, similarity = (
            [np.concatenate(part) for part in zip(*found)]
            if found
            else [np.zeros(0, np.int64)] * 2 + [np.zeros(0, np.float32)]
        )
    else:
        best, earliest = cut_lists
        if found:
            batch = [np.concatenate(part) for part in zip(*found)]
            best.offer(*batch)
            earliest.offer(*batch)
        cut = int((best.overflowed() & earliest.overflowed()).sum())
        listed = np.concatenate([best.other, earliest.other], axis=1)
        near_values = np.concatenate([best.similarity, earliest.similarity], axis=1)
        owner = np.repeat(np.arange(items.count), listed.shape[1]).reshape(listed.shape)
        keep = listed >= 0
        codes = owner[keep] * items.count + listed[keep]
        order = np.argsort(codes, kind="stable")
        first = order[np.concatenate([[True], codes[order][1:] != codes[order][:-1]])]
        item, other, similarity = owner[keep][first], listed[keep][first], near_values[keep][first]
    del found
    pointer, other, similarity = _adjacency(items.count, item, other, similarity)
    first_row = items.first_row
    kept_item = np.ones(items.count, bool)

    def keeper(item: int, row: int) -> tuple[int, float] | None:
        """The most similar kept item earlier than `row` among `item`'s neighbours (the earliest on ties)."""
        candidates = other[pointer[item] : pointer[item + 1]]
        ok = kept_item[candidates] & (first_row[candidates] < row)
        if not ok.any():
            return None
        at = int(np.argmax(ok))
        return int(candidates[at]), float(similarity[pointer[item] + at])

    keeper_of_item: dict[int, tuple[int, float]] = {}
    for number in np.flatnonzero(np.diff(pointer)).tolist():  # items without near neighbours stay kept
        found_keeper = keeper(number, int(first_row[number]))
        if found_keeper is not None:
            kept_item[number] = False
            keeper_of_item[number] = found_keeper
    rows = len(items.item_of_row)
    keeper_row = np.full(rows, -1, np.int64)
    keeper_similarity = np.zeros(rows, np.float64)
    for number, (keeper_item, value) in keeper_of_item.items():
        keeper_row[first_row[number]] = first_row[keeper_item]
        keeper_similarity[first_row[number]] = round(value, 4)
    repeats = np.flatnonzero(first_row[items.item_of_row] != np.arange(rows))
    empty = items.sizes == 0  # no n-grams (an empty question): never near anything, itself included
    for row in repeats.tolist():  # a later text of an item
        number = int(items.item_of_row[row])
        if empty[number]:
            continue
        if kept_item[number]:
            keeper_row[row], keeper_similarity[row] = first_row[number], 1.0
        else:
            found_keeper = keeper(number, row)
            assert found_keeper is not None  # the item's own keeper qualifies, so there is one
            keeper_item, value = found_keeper
            keeper_row[row], keeper_similarity[row] = first_row[keeper_item], round(value, 4)
    return keeper_row, keeper_similarity, stats, cut


def near_groups(
    items: Items,
    threshold: float,
    budget: int | None = None,
    threads: int = 1,
    partners: BestNeighbours | None = None,
) -> tuple[np.ndarray, int, SearchStats]:
    """Connected groups of items at least `threshold` similar (directly or through a chain).
    Returns a group label per item, the number of text pairs found at or above the threshold
    (identical texts included), and the stats. `partners`, if given, is offered the compared
    pairs below the threshold (split's nearest-train lookup at scale)."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    stats = SearchStats()
    labels = np.arange(items.count)
    multiplicity = np.where(items.sizes > 0, items.multiplicity, 1)
    pairs = int((multiplicity * (multiplicity - 1) // 2).sum())
    pending_left: list[np.ndarray] = []
    pending_right: list[np.ndarray] = []
    pending = 0

    def join() -> None:
        nonlocal labels, pending_left, pending_right, pending
        left, right = np.concatenate(pending_left), np.concatenate(pending_right)
        graph = sparse.coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(items.count, items.count))
        _, joined = connected_components(graph, directed=False)
        labels = joined[labels]  # a group merges whole groups: relabel every member
        pending_left, pending_right, pending = [], [], 0

    for left, right, similarity, near in compared_pairs(
        items, threshold, budget, threads, stats, keep_all=partners is not None
    ):
        if partners is not None:
            far = ~near
            partners.offer(
                np.concatenate([left[far], right[far]]).astype(np.int64),
                np.concatenate([right[far], left[far]]).astype(np.int64),
                np.concatenate([similarity[far], similarity[far]]),
            )
            left, right = left[near], right[near]
        pairs += int((multiplicity[left] * multiplicity[right]).sum())
        apart = labels[left] != labels[right]
        if apart.any():
            pending_left.append(labels[left[apart]])
            pending_right.append(labels[right[apart]])
            pending += int(apart.sum())
            if pending > 5_000_000:
                join()
    if pending:
        join()
    return labels, pairs, stats
