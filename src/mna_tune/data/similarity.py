"""Question similarity for near-duplicate collapse (merge) and leakage control (split).

Cosine similarity of binary character 2-3-gram vectors (scikit-learn's HashingVectorizer
over the normalised text). Hashing, not TF-IDF, on purpose: nothing is fitted on the data,
so the similarity of two questions depends on those two questions only. Editing one row
can then change only the pairs that row is part of, never the rest of the split.

Finding every pair above a threshold uses prefix filtering (the AllPairs method): with
binary vectors, cos(x, y) >= t implies the two share at least t^2 * |x| n-grams, so if
each row keeps only its |x| - ceil(t^2 |x|) + 1 rarest n-grams (a "prefix"), every such
pair shares a prefix n-gram. Candidate pairs come from the sparse product of the small
prefix matrix; their exact similarity is then computed from the full vectors. The result
is exact; document frequencies only decide which n-grams are cheap to index, so the
template endings every question shares ("…은 무엇인가요?") never make the product dense.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .text import match_key

CHUNK_ROWS = 512  # query rows per dense block in nearest(): bounds memory to CHUNK_ROWS x corpus
CHUNK_PAIRS = 50_000  # candidate pairs verified at once in similar_pairs()


def vectorize(texts: Sequence[str]):
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 3), n_features=2**20, alternate_sign=False,
                                   binary=True, norm=None, lowercase=True)
    return vectorizer.transform([match_key(text) for text in texts]).tocsr()


def _prefix_matrix(binary, threshold: float):
    """Each row's rarest n-grams, as many as prefix filtering needs for `threshold`."""
    import numpy as np
    from scipy import sparse

    document_frequency = np.bincount(binary.indices, minlength=binary.shape[1])
    rows, cols = [], []
    for row in range(binary.shape[0]):
        features = binary.indices[binary.indptr[row]:binary.indptr[row + 1]]
        if len(features) == 0:
            continue
        keep = len(features) - math.ceil(threshold * threshold * len(features) - 1e-9) + 1
        order = np.lexsort((features, document_frequency[features]))[:keep]  # rarest first, ties by id
        rows.extend([row] * len(order))
        cols.extend(features[order].tolist())
    data = np.ones(len(rows), dtype=np.float32)
    return sparse.csr_matrix((data, (rows, cols)), shape=binary.shape)


def similar_pairs(texts: Sequence[str], threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, whose similarity is at least `threshold`, sorted."""
    import numpy as np
    from scipy import sparse

    binary = vectorize(texts)
    if binary.shape[0] < 2:
        return []
    prefix = _prefix_matrix(binary, threshold)
    candidates = sparse.triu(prefix @ prefix.T, k=1).tocoo()
    sizes = np.diff(binary.indptr)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, candidates.nnz, CHUNK_PAIRS):  # exact similarity, a bounded number of rows at a time
        left = candidates.row[start:start + CHUNK_PAIRS]
        right = candidates.col[start:start + CHUNK_PAIRS]
        overlap = np.asarray(binary[left].multiply(binary[right]).sum(axis=1)).ravel()
        similarity = overlap / np.sqrt(sizes[left] * sizes[right])
        keep = similarity >= threshold - 1e-9
        pairs.extend(zip(left[keep].tolist(), right[keep].tolist(), np.round(similarity[keep], 4).tolist()))
    return sorted(pairs)


def nearest(queries: Sequence[str], corpus: Sequence[str]) -> list[tuple[int | None, float]]:
    """For each query, the index of its most similar corpus text and the similarity
    (None, 0.0 when nothing in the corpus shares a character n-gram with it)."""
    if not queries:
        return []
    if not corpus:
        return [(None, 0.0)] * len(queries)
    from sklearn.preprocessing import normalize

    query_matrix, corpus_matrix = normalize(vectorize(queries)), normalize(vectorize(corpus)).T.tocsr()
    out: list[tuple[int | None, float]] = []
    for start in range(0, query_matrix.shape[0], CHUNK_ROWS):
        block = (query_matrix[start:start + CHUNK_ROWS] @ corpus_matrix).toarray()
        best = block.argmax(axis=1)  # the earliest corpus row on ties
        for row, column in enumerate(best):
            value = float(block[row, column])
            out.append((int(column), round(value, 4)) if value > 0 else (None, 0.0))
    return out


def components(count: int, pairs: Sequence[tuple[int, int, float]]) -> list[int]:
    """For each item, a label shared by exactly the items its pairs connect (transitively)."""
    import numpy as np
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    left = np.fromiter((i for i, _, _ in pairs), dtype=np.int64, count=len(pairs))
    right = np.fromiter((j for _, j, _ in pairs), dtype=np.int64, count=len(pairs))
    graph = sparse.coo_matrix((np.ones(len(pairs), dtype=np.int8), (left, right)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    return labels.tolist()
