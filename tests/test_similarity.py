"""Prefix-filtered pair search finds exactly the pairs a brute-force comparison finds."""

import random

import numpy as np
import pytest

from mna_tune.data.similarity import components, nearest, similar_pairs, vectorize


def questions(count=400, seed=0):
    rng = random.Random(seed)
    words = ["합병", "분할", "인수", "주식", "매수", "청구권", "요건", "절차", "공시", "이사회", "주주총회", "가격"]
    out = []
    for _ in range(count):  # templated, with shared endings: the hard case for sparse products
        picked = rng.sample(words, rng.randint(1, 4))
        out.append(" ".join(picked) + rng.choice(["은 무엇인가요?", "의 요건은?", "이란 무엇인가요?"]))
    return out


def brute_force(texts, threshold):
    matrix = vectorize(texts)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    sims = (matrix @ matrix.T).toarray() / np.outer(norms, norms)  # every pair, the slow way
    return sorted(
        (i, j, round(float(sims[i, j]), 4))
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
        if sims[i, j] >= threshold - 1e-9
    )


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 1.0])
def test_prefix_filtering_is_exact(threshold):
    texts = questions()
    found, expected = similar_pairs(texts, threshold), brute_force(texts, threshold)
    assert [(i, j) for i, j, _ in found] == [(i, j) for i, j, _ in expected] and len(found) > 10
    assert all(abs(a[2] - b[2]) <= 1e-4 for a, b in zip(found, expected))


def test_similarity_of_a_pair_ignores_the_other_rows():
    pair = ["합병의 두 가지 유형은 무엇인가요?", "합병의 두 가지 방식은 무엇인가요?"]
    alone = similar_pairs(pair, 0.5)
    crowded = similar_pairs(pair + questions(200), 0.5)
    assert alone == [(0, 1, 0.8286)] and (0, 1, 0.8286) in crowded


def test_nearest_and_components():
    corpus = ["공개매수란 무엇인가요?", "실사란 무엇인가요?"]
    found = nearest(["공개 매수란 무엇인가요?", "ㅋㅋ"], corpus)
    assert found[0][0] == 0 and 0.5 < found[0][1] < 1 and found[1] == (None, 0.0)
    assert components(5, [(0, 3, 0.9), (3, 4, 0.9)]) == [0, 1, 2, 0, 0]


def test_word_cached_vectors_are_sklearns():
    from mna_tune.data.similarity import vectorize_chunk

    rng = random.Random(5)
    alphabet = list("가나다라마 ABCabcΣσİI12?!.,\u200b\t\n ") + [chr(0xAC00 + i) for i in range(0, 11172, 37)]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(2000)] + ["ΟΔΟΣ", ""]
    expected = vectorize(texts)
    expected.sort_indices()
    indptr, indices = vectorize_chunk(texts)
    assert indptr.tolist() == expected.indptr.tolist() and indices.tolist() == expected.indices.tolist()


def test_identical_question_sets_fold_into_one_item_across_batches(monkeypatch):
    from mna_tune.data import similarity

    texts = questions(300, seed=4) * 2 + ["합병 인수은 무엇인가요?", "인수 합병은 무엇인가요?"]
    whole = similarity.distinct_items(texts)
    monkeypatch.setattr(similarity.items, "VECTOR_CHUNK", 7)
    batched = similarity.distinct_items(texts, processes=2)
    assert batched.item_of_row.tolist() == whole.item_of_row.tolist()
    assert batched.indices.tolist() == whole.indices.tolist() and batched.first_row.tolist() == whole.first_row.tolist()
    assert whole.count < 300 and whole.multiplicity.sum() == len(texts)
    assert whole.first_row.tolist() == sorted(whole.first_row.tolist())  # items in first-occurrence order
    matrix = vectorize(texts)
    for row, item in enumerate(whole.item_of_row.tolist()):  # a row's item holds exactly its n-grams
        own = matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]]
        assert sorted(own) == whole.indices[whole.indptr[item] : whole.indptr[item + 1]].tolist()


def brute_force_greedy(texts, threshold):
    neighbours = {}
    for i, j, value in brute_force(texts, threshold):
        neighbours.setdefault(j, []).append((i, value))
    kept, keeper = [True] * len(texts), [-1] * len(texts)
    for j in range(len(texts)):
        matches = [(value, -i) for i, value in neighbours.get(j, []) if kept[i]]
        if matches:
            kept[j], keeper[j] = False, -max(matches)[1]
    return keeper


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_greedy_collapse_is_the_brute_force_greedy(threshold):
    from mna_tune.data.similarity import distinct_items, greedy_keepers

    texts = questions(500, seed=3) + questions(100, seed=3)  # dense near-duplicates and exact repeats
    keeper, _, stats, cut = greedy_keepers(distinct_items(texts), threshold, threads=2)  # two search threads
    assert stats.exact and cut == 0
    assert keeper.tolist() == brute_force_greedy(texts, threshold)


def test_bounded_search_compares_at_most_its_budget_and_finds_only_true_pairs():
    """20,000 questions from a 36-word vocabulary: every n-gram is common. The old search's
    sparse product would have held ~10^8 candidate pairs (counted here from the same prefix
    lists); the bounded one compares at most its budget, in bounded memory, and says so."""
    import tracemalloc

    from mna_tune.data import similarity

    rng = random.Random(11)
    vocabulary = [f"{a}{b}" for a in "합병분할인수주식매수공시요건" for b in "가나다"][:36]
    texts = [" ".join(rng.sample(vocabulary, 6)) + rng.choice(["은 무엇인가요?", "의 요건은?"]) for _ in range(20_000)]
    items = similarity.distinct_items(texts)
    threshold, budget = 0.8, 400_000
    stats = similarity.SearchStats()
    tracemalloc.start()
    found = [block for block in similarity.compared_pairs(items, threshold, budget, 1, stats)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    unbounded = similarity.search._plan(items, threshold, 10**18, similarity.SearchStats())
    old = sum(s * (s - 1) // 2 for s in np.diff(unbounded.list_start).tolist())
    assert old > 100_000_000 and stats.skipped_pairs > 0.9 * old - budget and not stats.exact
    assert stats.candidate_pairs <= budget and peak < 150 * 2**20
    left = np.concatenate([b[0] for b in found])
    right = np.concatenate([b[1] for b in found])
    value = np.concatenate([b[2] for b in found])
    assert len(left) > 1000 and (value >= threshold - 1e-6).all()
    for a, b, v in list(zip(left.tolist(), right.tolist(), value.tolist()))[:500]:  # true similarities
        x = set(items.indices[items.indptr[a] : items.indptr[a + 1]].tolist())
        y = set(items.indices[items.indptr[b] : items.indptr[b + 1]].tolist())
        assert abs(len(x & y) / np.sqrt(len(x) * len(y)) - v) < 1e-4


def test_cut_neighbour_lists_never_collapse_a_row_wrongly(monkeypatch):
    from mna_tune.data import similarity

    texts = questions(600, seed=5)
    monkeypatch.setattr(similarity.keep, "NEAR_PAIRS", 100)  # keep only the best and earliest few per item
    keeper, value, stats, cut = similarity.greedy_keepers(similarity.distinct_items(texts), 0.5, neighbours=2)
    assert cut > 0
    truth = {(i, j): v for i, j, v in brute_force(texts, 0.5)}
    for row, kept_row in enumerate(keeper.tolist()):
        if kept_row >= 0:
            assert kept_row < row and keeper[kept_row] == -1 and abs(truth[(kept_row, row)] - value[row]) < 2e-4
