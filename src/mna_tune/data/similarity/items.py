"""Questions as binary character 2-3-gram vectors, and texts with identical n-gram sets folded
into one *item* (numbered in order of their first text)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..parallel import ordered_map
from ..text import match_key
from .arrays import _batched, _mix, _ragged, gather_rows

N_FEATURES = 2**20


VECTOR_CHUNK = 4096  # texts per vectorizing task


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
        self.reset()

    def reset(self) -> None:
        """Empty, as new: what `finish` leaves behind (the arrays go with the items)."""
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
        self.reset()
        return items


def distinct_items(texts: Iterable[str], processes: int = 1) -> Items:
    """Vectorize `texts` (streamed, VECTOR_CHUNK at a time, on `processes` cores) and fold
    texts with identical n-gram sets into one item."""
    builder = ItemsBuilder()
    for indptr, indices in ordered_map(vectorize_chunk, _batched(texts, VECTOR_CHUNK), processes):
        builder.add(indptr, indices)
    return builder.finish()
