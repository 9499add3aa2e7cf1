from mna_tune.data.text import clean_text, content_id, match_key, question_key, unit_interval


def test_clean_text_keeps_line_breaks_and_composes_hangul():
    decomposed = "\u1112\u1161\u11b8\u1107\u1167\u11bc"  # 합병 as conjoining jamo (NFD)
    assert clean_text(f"  {decomposed}  이란\t\t무엇\r\n\n\n\n1. 흡수합병 ") == "합병 이란 무엇\n\n1. 흡수합병"


def test_match_key_ignores_every_whitespace_difference():
    assert match_key("합병이란  무엇인가요?\n") == match_key(" 합병이란 무엇인가요?") == "합병이란 무엇인가요?"


def test_content_id_is_stable_under_whitespace_and_differs_by_content():
    assert content_id("합병이란?", "두 회사가 합쳐지는 것") == content_id(" 합병이란? ", "두 회사가  합쳐지는 것")
    assert content_id("합병이란?", "A") != content_id("합병이란?", "B")
    assert len(content_id("q", "a")) == 16


def test_unit_interval_is_deterministic_and_seed_dependent():
    key = question_key("합병이란?")
    assert unit_interval(1, key) == unit_interval(1, key)
    assert unit_interval(1, key) != unit_interval(2, key)
    values = [unit_interval(7, question_key(f"질문 {i}")) for i in range(2000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55
