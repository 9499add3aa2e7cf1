"""Question similarity for near-duplicate collapse (merge) and leakage control (split).

Cosine similarity of binary character 2-3-gram vectors (scikit-learn's HashingVectorizer
over the normalised text). Hashing, not TF-IDF, on purpose: nothing is fitted on the data,
so the similarity of two questions depends on those two questions only. Editing one row
can then change only the pairs that row is part of, never the rest of the split.

Questions with identical n-gram sets are one *item* (similarity 1.0, handled exactly, and
never compared again). Finding every pair of items above a threshold uses prefix filtering
(the AllPairs method): with binary vectors, cos(x, y) >= t implies the two share at least
t^2 * |x| n-grams, so if each item keeps only its |x| - ceil(t^2 |x|) + 1 rarest n-grams (a
"prefix"), every such pair shares a prefix n-gram. Candidate pairs are the pairs of items
on one prefix n-gram's list; their exact similarity is then computed from the full vectors.

Bounded whatever the text. The work is planned before it starts: a list of s items costs
s(s-1)/2 comparisons, and the sum must stay under PAIR_BUDGET. On ordinary questions it does,
and the result is exact (tested against brute force). Templated questions from a small
vocabulary make every n-gram common, so some lists are huge (at a million rows the exact
search would compare ~10^11 pairs). Lists longer than the planned cap are *capped*: each of
their items is compared with its WINDOW neighbours in an order where similar items sit
together (a min-hash of the item's other prefix n-grams: a function of the item alone) and
with the list's PIVOTS earliest items (the rows a greedy collapse keeps). The pairs of a
capped list that were not compared through it are counted (`candidate_pairs_skipped`, per
list, so a pair compared through another list may be counted), and the stage metrics say
whether the search was exact. Pairs reported are always true pairs.

Memory is bounded too: candidates are made and compared in blocks of about BLOCK_PAIRS on
two threads (numpy and scipy release the GIL; threads share the plan, nothing is copied),
a per-item bound on shared n-grams (SKETCH hash-bucket counts) rules most candidates out
before the exact count, and only what a stage needs is kept (merge: its near pairs, or a
few best per item beyond NEAR_PAIRS; split: group labels). Vectorizing is built from cached
per-word features (char_wb n-grams never cross a word) and gives scikit-learn's vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .parallel import ordered_map
from .text import match_key

N_FEATURES = 2**20
CHUNK_ROWS = 512  # most query rows per dense block in nearest()
DENSE_BLOCK = 1 << 22  # most entries (query rows x corpus items) of one dense block in nearest()
CHUNK_PAIRS = 50_000  # candidate pairs whose overlap is computed at once
VECTOR_CHUNK = 4096  # texts per vectorizing task
PAIR_BUDGET = 60_000_000  # candidate pairs made and compared, per search (well under 1 us each)
BLOCK_PAIRS = 500_000  # candidate pairs made per block (bounds the memory of a block)
WINDOW, PIVOTS = 16, 16  # per item of a capped list, at most (fewer when the budget is tight)
PREFIX_CHUNK = 1_000_000  # n-gram entries sorted at once while choosing prefixes
SKETCH = 64  # hash buckets of the overlap bound (a power of two)
NEAR_PAIRS = 10_000_000  # near pairs merge holds in full; beyond, a few per item (greedy_keepers)


def _vectorizer():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        analyzer="char_wb",
        ngram_range=(2, 3),
        n_features=N_FEATURES,
        alternate_sign=False,
        binary=True,
        norm=None,
        lowercase=True,
    )


def vectorize(texts: Sequence[str]):
    return _vectorizer().transform([match_key(text) for text in texts]).tocsr()


# ---- distinct items ----


def _mix(values: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of each value (uint64 arithmetic wraps): a fixed pseudo-random hash."""
    z = values.astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _set_hash(indptr: np.ndarray, indices: np.ndarray, seed: int) -> np.ndarray:
    """Per row, a hash of its n-gram set (the sum of the n-grams' hashes, order-free)."""
    sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(_mix(indices, seed), dtype=np.uint64)])
    return sums[indptr[1:]] - sums[indptr[:-1]]


_WORDS: dict[str, tuple[int, ...]] = {}  # per process: a word's n-gram features (char_wb pads each word alone)
WORD_CACHE = 200_000


def vectorize_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """vectorize(texts) as (indptr, indices), built from cached per-word features: the same
    features (char_wb n-grams never cross a word boundary), several times faster."""
    from itertools import chain

    local: dict[str, int] = {}
    word_ids: list[int] = []
    lengths: list[int] = []
    for text in texts:
        words = match_key(text).lower().split()
        for word in words:
            number = local.get(word)
            if number is None:
                number = local[word] = len(local)
            word_ids.append(number)
        lengths.append(len(words))
    unseen = [word for word in local if word not in _WORDS]
    if unseen:
        if len(_WORDS) + len(unseen) > WORD_CACHE:
            _WORDS.clear()
            unseen = list(local)
        matrix = _vectorizer().transform(unseen)
        matrix.sort_indices()
        for row, word in enumerate(unseen):
            _WORDS[word] = tuple(matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]].tolist())
    features = [_WORDS[word] for word in local]
    word_length = np.fromiter(map(len, features), np.int64, count=len(features))
    word_start = np.concatenate([np.zeros(1, np.int64), np.cumsum(word_length)])[:-1]
    word_features = np.fromiter(chain.from_iterable(features), np.int64, count=int(word_length.sum()))
    ids = np.asarray(word_ids, np.int64)
    which, where = _ragged(word_start[ids], word_length[ids])
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)[which]
    key = np.sort((owner << 20) | word_features[where])  # binary: each text's features once, sorted
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if len(key) else key
    counts = np.bincount(key >> 20, minlength=len(texts))
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)]), (key & (N_FEATURES - 1)).astype(np.int32)


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique hashes integers in numpy 2 and is many times slower)."""
    values = np.sort(values)
    return values[np.concatenate([[True], values[1:] != values[:-1]])] if len(values) else values


def _bits(largest: int) -> int:
    return max(1, int(largest).bit_length())


def _order(*columns: tuple[np.ndarray, int]) -> np.ndarray:
    """Stable argsort by several non-negative integer columns (most significant first), each
    given with its largest possible value: one sort of a packed 63-bit key when they fit."""
    widths = [_bits(largest) for _, largest in columns]
    if sum(widths) > 63:
        return np.lexsort(tuple(np.asarray(values) for values, _ in reversed(columns)))
    key = np.zeros(len(columns[0][0]), np.int64)
    for (values, _), width in zip(columns, widths):
        key = (key << width) | np.asarray(values).astype(np.int64)
    return np.argsort(key, kind="stable")


def gather_rows(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR rows `rows` of (indptr, values), as a new (indptr, values)."""
    lengths = indptr[rows + 1] - indptr[rows]
    new_indptr = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)])
    positions = np.repeat(indptr[rows] - new_indptr[:-1], lengths) + np.arange(new_indptr[-1])
    return new_indptr, values[positions]


@dataclass
class Items:
    """The distinct n-gram sets of some texts. Items are numbered in order of their first text."""

    indptr: np.ndarray  # int64, CSR over items
    indices: np.ndarray  # int32, sorted within each item
    item_of_row: np.ndarray  # int64, for each text its item
    first_row: np.ndarray  # int64, for each item its first text (ascending)
    multiplicity: np.ndarray  # int64, texts per item

    @property
    def count(self) -> int:
        return len(self.first_row)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def matrix(self, data: np.ndarray | None = None):
        from scipy import sparse

        values = np.ones(len(self.indices), np.int8) if data is None else data
        return sparse.csr_matrix((values, self.indices, self.indptr), shape=(self.count, N_FEATURES))


class FirstSeen:
    """First occurrences in a stream of 64-bit keys, held as two sorted numpy arrays (no Python
    object per key): for each key of a batch, the value stored with its first occurrence."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.uint64)
        self.values = np.zeros(0, np.int64)

    def first(self, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Earlier batches come first, then this batch in order; a new key is stored with its
        first value in the batch."""
        keys, values = np.asarray(keys, np.uint64), np.asarray(values, np.int64)
        result = np.empty(len(keys), np.int64)
        at = np.searchsorted(self.keys, keys)
        found = np.zeros(len(keys), bool)
        if len(self.keys):
            clipped = np.minimum(at, len(self.keys) - 1)
            found = self.keys[clipped] == keys
            result[found] = self.values[clipped[found]]
        new = np.flatnonzero(~found)
        if len(new):
            order = new[np.argsort(keys[new], kind="stable")]
            ordered = keys[order]
            starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])
            first = order[starts]  # each new key's first place in the batch
            result[order] = values[first][np.cumsum(starts) - 1]
            where = np.searchsorted(self.keys, ordered[starts])
            self.keys = np.insert(self.keys, where, ordered[starts])
            self.values = np.insert(self.values, where, values[first])
        return result


class ItemsBuilder:
    """Folds vectorized texts, batch after batch, into distinct items: a text whose n-gram set
    was seen before (the same 64-bit set hash, checked against a second hash and the size)
    joins that item, so only the vectors of distinct sets are kept."""

    def __init__(self) -> None:
        self.seen = FirstSeen()  # set hash -> first row
        self.pointers: list[np.ndarray] = [np.zeros(1, np.int64)]
        self.pieces: list[np.ndarray] = []
        self.item_of_row: list[np.ndarray] = []
        self.first_row: list[np.ndarray] = []
        self.check: list[np.ndarray] = []  # per item: second hash and size
        self.items = self.rows = self.entries = 0

    def add(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        sizes = np.diff(indptr)
        rows = self.rows + np.arange(len(sizes))
        first = self.seen.first(_set_hash(indptr, indices, 1), rows)
        check = _set_hash(indptr, indices, 2) ^ sizes.astype(np.uint64)
        new = first == rows
        earlier = np.flatnonzero(~new & (first < self.rows))
        items = np.empty(len(sizes), np.int64)
        if len(earlier):  # a set met in an earlier batch
            known_first = np.concatenate(self.first_row)
            known_check = np.concatenate(self.check)
            items[earlier] = np.searchsorted(known_first, first[earlier])
            collided = known_check[items[earlier]] != check[earlier]
            new[earlier[collided]] = True  # a 64-bit collision, never seen so far: its own item
        items[new] = self.items + np.arange(int(new.sum()))
        inside = np.flatnonzero(~new & (first >= self.rows))  # a set met earlier in this batch
        items[inside] = items[first[inside] - self.rows]
        if len(inside):
            collided = check[inside] != check[first[inside] - self.rows]
            if collided.any():
                raise AssertionError("64-bit set hash collision inside one batch")  # p ~ 1e-15
        self.item_of_row.append(items)
        fresh = np.flatnonzero(new)
        if len(fresh):
            sub_indptr, sub_indices = gather_rows(indptr, indices, fresh)
            self.pointers.append(sub_indptr[1:] + self.entries)
            self.pieces.append(sub_indices)
            self.first_row.append(rows[fresh])
            self.check.append(check[fresh])
            self.entries += int(sub_indptr[-1])
            self.items += len(fresh)
        self.rows += len(sizes)

    def finish(self) -> Items:
        item_of_row = np.concatenate(self.item_of_row) if self.item_of_row else np.zeros(0, np.int64)
        first_row = np.concatenate(self.first_row) if self.first_row else np.zeros(0, np.int64)
        indices = np.empty(self.entries, np.int32)
        at = 0
        while self.pieces:  # piece by piece, each freed once copied: never two copies of all vectors
            piece = self.pieces.pop(0)
            indices[at : at + len(piece)] = piece
            at += len(piece)
            del piece
        items = Items(
            np.concatenate(self.pointers),
            indices,
            item_of_row,
            first_row,
            np.bincount(item_of_row, minlength=len(first_row)),
        )
        self.__init__()
        return items


def distinct_items(texts: Iterable[str], processes: int = 1) -> Items:
    """Vectorize `texts` (streamed, VECTOR_CHUNK at a time, on `processes` cores) and fold
    texts with identical n-gram sets into one item."""
    builder = ItemsBuilder()
    for indptr, indices in ordered_map(vectorize_chunk, _batched(texts, VECTOR_CHUNK), processes):
        builder.add(indptr, indices)
    return builder.finish()


def _libc():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:  # by name: ctypes.util.find_library would fork a helper process of this (large) one
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def map_large_arrays() -> None:
    """Let every allocation over 1 MiB be its own mapping, returned to the system when freed.
    glibc otherwise raises that threshold after the first large free and serves the many
    same-sized vector chunks from its heap, where freed holes stay resident."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (a fixed value also stops its adjustment)


# ---- the bounded pair search ----


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
    matrix: object = None
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


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i, the places starts[i] .. starts[i] + lengths[i] - 1: (which i, place)."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    which = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)[:-1]])
    return which, np.repeat(starts - offsets, lengths) + np.arange(total)


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


# ---- what the stages keep of the compared pairs ----


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
    best = earliest = None
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
            if best is None:
                best = BestNeighbours(items.count, neighbours)
                earliest = BestNeighbours(items.count, neighbours, earliest=True)
            batch = [np.concatenate(part) for part in zip(*found)]
            best.offer(*batch)
            earliest.offer(*batch)
            found, held = [], 0
    cut = 0
    if best is None:
        item, other, similarity = (
            [np.concatenate(part) for part in zip(*found)]
            if found
            else [np.zeros(0, np.int64)] * 2 + [np.zeros(0, np.float32)]
        )
    else:
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
    for item in np.flatnonzero(np.diff(pointer)).tolist():  # items without near neighbours stay kept
        found_keeper = keeper(item, int(first_row[item]))
        if found_keeper is not None:
            kept_item[item] = False
            keeper_of_item[item] = found_keeper
    rows = len(items.item_of_row)
    keeper_row = np.full(rows, -1, np.int64)
    keeper_similarity = np.zeros(rows, np.float64)
    for item, (keeper_item, value) in keeper_of_item.items():
        keeper_row[first_row[item]] = first_row[keeper_item]
        keeper_similarity[first_row[item]] = round(value, 4)
    repeats = np.flatnonzero(first_row[items.item_of_row] != np.arange(rows))
    empty = items.sizes == 0  # no n-grams (an empty question): never near anything, itself included
    for row in repeats.tolist():  # a later text of an item
        item = int(items.item_of_row[row])
        if empty[item]:
            continue
        if kept_item[item]:
            keeper_row[row], keeper_similarity[row] = first_row[item], 1.0
        else:
            keeper_item, value = keeper(item, row)  # the item's own keeper qualifies, so there is one
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


# ---- small inputs (tests, a few thousand questions) ----


def similar_pairs(
    texts: Sequence[str], threshold: float, budget: int | None = None, stats: SearchStats | None = None
) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, whose similarity is at least `threshold`, sorted (identical
    questions included, at 1.0). Lists every pair: for inputs small enough to hold them."""
    items = distinct_items(texts)
    rows_of: dict[int, list[int]] = {}
    for row, item in enumerate(items.item_of_row.tolist()):
        rows_of.setdefault(item, []).append(row)
    pairs: list[tuple[int, int, float]] = []
    for item, group in rows_of.items():
        if items.sizes[item] > 0:
            pairs.extend((i, j, 1.0) for k, i in enumerate(group) for j in group[k + 1 :])
    for left, right, similarity, _ in compared_pairs(items, threshold, budget, 1, stats):
        for a, b, value in zip(left.tolist(), right.tolist(), similarity.tolist()):
            pairs.extend((min(i, j), max(i, j), round(value, 4)) for i in rows_of[a] for j in rows_of[b])
    return sorted(pairs)


def nearest(queries: Sequence[str], corpus: Sequence[str]) -> list[tuple[int | None, float]]:
    """For each query, the index of its most similar corpus text and the similarity
    (None, 0.0 when nothing in the corpus shares a character n-gram with it). Exact: compares
    every query with every corpus text, in dense blocks of at most DENSE_BLOCK entries."""
    if not queries:
        return []
    if not corpus:
        return [(None, 0.0)] * len(queries)
    from sklearn.preprocessing import normalize

    return nearest_rows(normalize(vectorize(queries)), normalize(vectorize(corpus)))


def nearest_rows(query_matrix, corpus_matrix) -> list[tuple[int | None, float]]:
    """nearest() for L2-normalised row vectors."""
    corpus_t = corpus_matrix.T.tocsr()
    rows_per_block = max(1, min(CHUNK_ROWS, DENSE_BLOCK // max(1, corpus_matrix.shape[0])))
    out: list[tuple[int | None, float]] = []
    for start in range(0, query_matrix.shape[0], rows_per_block):
        block = (query_matrix[start : start + rows_per_block] @ corpus_t).toarray()
        best = block.argmax(axis=1)  # the earliest corpus row on ties
        for row, column in enumerate(best):
            value = float(block[row, column])
            out.append((int(column), round(value, 4)) if value > 0 else (None, 0.0))
    return out


def nearest_work(query_matrix, corpus_matrix) -> float:
    """Multiply-adds of the exact nearest search (the sparse product's cost)."""
    queries = np.bincount(query_matrix.indices, minlength=N_FEATURES).astype(np.float64)
    corpus = np.bincount(corpus_matrix.indices, minlength=N_FEATURES).astype(np.float64)
    return float(queries @ corpus)


def components(count: int, pairs: Sequence[tuple[int, int, float]]) -> list[int]:
    """For each item, a label shared by exactly the items its pairs connect (transitively)."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    left = np.fromiter((i for i, _, _ in pairs), dtype=np.int64, count=len(pairs))
    right = np.fromiter((j for _, j, _ in pairs), dtype=np.int64, count=len(pairs))
    graph = sparse.coo_matrix((np.ones(len(pairs), dtype=np.int8), (left, right)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    return labels.tolist()
