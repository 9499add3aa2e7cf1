"""Sorting and gathering helpers on flat numpy arrays, shared by the vectorizer and the search."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def _mix(values: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of each value (uint64 arithmetic wraps): a fixed pseudo-random hash."""
    z = values.astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


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


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each i, the places starts[i] .. starts[i] + lengths[i] - 1: (which i, place)."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    which = np.repeat(np.arange(len(starts)), lengths)
    offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(lengths)[:-1]])
    return which, np.repeat(starts - offsets, lengths) + np.arange(total)
