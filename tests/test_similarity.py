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
    return sorted((i, j, round(float(sims[i, j]), 4)) for i in range(len(texts)) for j in range(i + 1, len(texts))
                  if sims[i, j] >= threshold - 1e-9)


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
