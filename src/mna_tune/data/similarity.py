"""Question similarity for near-duplicate collapse (merge) and leakage control (split).

Cosine similarity of binary character 2-3-gram vectors (scikit-learn's HashingVectorizer
over the normalised text). Hashing, not TF-IDF, on purpose: nothing is fitted on the data,
so the similarity of two questions depends on those two questions only. Editing one row
can then change only the pairs that row is part of, never the rest of the split.

Cost: a sparse product of the rows with themselves, in chunks. That suits the rows that
survive filtering (tens of thousands); it is not meant for a million unfiltered rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from .text import match_key

CHUNK_ROWS = 2048  # rows per sparse product: bounds memory to CHUNK_ROWS x n similarities


def vectorize(texts: Sequence[str]):
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 3), n_features=2**20, alternate_sign=False,
                                   binary=True, norm="l2", lowercase=True)
    return vectorizer.transform([match_key(text) for text in texts])


def similar_pairs(texts: Sequence[str], threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, whose similarity is at least `threshold`, sorted."""
    matrix = vectorize(texts)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, matrix.shape[0], CHUNK_ROWS):
        block = (matrix[start:start + CHUNK_ROWS] @ matrix.T).tocoo()
        for i, j, value in zip(block.row + start, block.col, block.data):
            if j > i and value >= threshold - 1e-9:
                pairs.append((int(i), int(j), round(float(value), 4)))
    return sorted(pairs)


def nearest(queries: Sequence[str], corpus: Sequence[str]) -> list[tuple[int | None, float]]:
    """For each query, the index of its most similar corpus text and the similarity
    (None, 0.0 when nothing in the corpus shares a character n-gram with it)."""
    if not queries:
        return []
    if not corpus:
        return [(None, 0.0)] * len(queries)
    query_matrix, corpus_matrix = vectorize(queries), vectorize(corpus)
    out: list[tuple[int | None, float]] = []
    for start in range(0, query_matrix.shape[0], CHUNK_ROWS):
        block = (query_matrix[start:start + CHUNK_ROWS] @ corpus_matrix.T).tocsr()
        block.sort_indices()  # ties go to the earliest corpus row, whatever scipy's order
        for row in range(block.shape[0]):
            values = block.data[block.indptr[row]:block.indptr[row + 1]]
            if len(values) == 0:
                out.append((None, 0.0))
                continue
            best = int(values.argmax())
            out.append((int(block.indices[block.indptr[row] + best]), round(float(values[best]), 4)))
    return out


def components(count: int, pairs: Sequence[tuple[int, int, float]]) -> list[int]:
    """Union-find over the pairs: for each item, the smallest index of its group."""
    parent = list(range(count))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for i, j, _ in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [root(item) for item in range(count)]
