"""Exact helpers for small inputs (tests, a few thousand questions) and the dense
nearest-neighbour lookup split uses when it is cheap enough."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .items import N_FEATURES, distinct_items, vectorize
from .search import SearchStats, compared_pairs

CHUNK_ROWS = 512  # most query rows per dense block in nearest()


DENSE_BLOCK = 1 << 22  # most entries (query rows x corpus items) of one dense block in nearest()


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
