import pytest

from mna_tune.evaluation.korean_metrics import chrf, hangul_share, is_korean_only, morphemes, rouge_l_f1


def test_morphemes_split_korean_and_drop_punctuation():
    assert morphemes("회사를 합병했다.") == ["회사", "를", "합병", "하", "었", "다"]


def test_rouge_l_over_morphemes_matches_hand_computed_lcs():
    # reference 회사/를/합병/하/었/다, prediction 회사/를/인수/하/었/다: LCS 5 of 6 -> P = R = F = 5/6
    assert rouge_l_f1(["회사를 인수했다"], ["회사를 합병했다."]) == [pytest.approx(5 / 6)]
    assert rouge_l_f1(["회사를 합병했다"], ["회사를 합병했다."]) == [pytest.approx(1.0)]
    # prediction 합병/하/었/다 (4) vs reference (6): LCS 4 -> P 1, R 2/3, F 0.8
    assert rouge_l_f1(["합병했다"], ["회사를 합병했다"]) == [pytest.approx(0.8)]


def test_rouge_l_scores_hangul_unlike_the_default_rouge_tokenizer():
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rougeL"]).score("회사를 합병했다", "회사를 합병했다")["rougeL"].fmeasure
    assert default == 0.0  # the library's own tokenizer drops every Hangul character
    assert rouge_l_f1(["회사를 합병했다"], ["회사를 합병했다"]) == [1.0]


def test_chrf_bounds():
    assert chrf(["합병 절차"], ["합병 절차"]) == pytest.approx(100.0)
    assert chrf(["가나"], ["다라"]) == 0.0


@pytest.mark.parametrize(
    "text, korean_only",
    [
        ("합병은 두 회사가 하나로 합쳐지는 것입니다.", True),
        ("합병 사례가 较多 있습니다.", False),  # Chinese leaked in, as the original base model did
        ("합병はです", False),  # Japanese kana
        ("M&A는 합병입니다", False),  # letters: 6 Hangul of 8 -> 75 %
        ("", False),
        ("12345 !!", False),  # no letters at all
        ("가" * 38 + "AB", True),  # exactly 95 % Hangul
        ("가" * 37 + "ABC", False),  # 92.5 %
    ],
)
def test_korean_only(text, korean_only):
    assert is_korean_only(text) is korean_only


def test_hangul_share():
    assert hangul_share("M&A는 합병입니다") == pytest.approx(6 / 8)
    assert hangul_share("ㄱㄴ") == 1.0  # compatibility jamo count as Hangul


def test_domain_term_counts_and_pairwise_rouge():
    import re

    from mna_tune.evaluation.korean_metrics import domain_term_counts, mean_pairwise_rouge_l

    terms = re.compile("주주총회|합병|이사회")
    assert domain_term_counts("합병은 이사회와 주주총회가", "합병은 이사회가", terms) == (2, 2, 3)
    assert domain_term_counts("네", "합병", terms) == (0, 1, 0)
    assert mean_pairwise_rouge_l(["회사를 합병했다"]) is None
    assert mean_pairwise_rouge_l(["", " "]) == 1.0  # identical (empty) answers agree
    assert mean_pairwise_rouge_l(["회사를 합병했다", "회사를 인수했다"]) == pytest.approx(5 / 6)
