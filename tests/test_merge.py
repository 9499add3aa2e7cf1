import json

import pytest

from mna_tune.chat import SYSTEM_PROMPT
from mna_tune.errors import InputError
from mna_tune.workspace import read_jsonl, write_jsonl
from mna_tune.data.merge import run_merge
from mna_tune.data.mna import read_mna
from mna_tune.params import MergeParams, MergePaths


def aihub(question, answer, category="사회"):
    return {"question": question, "answer": answer, "category": category, "file": "Other/Other.zip",
            "entry": "/OT.json", "record": "[0]", "subset": "Other", "kind": "other", "score": 50}


def run(tmp_path, mna_records, aihub_rows, near_dup_threshold=0.9, with_near=False):
    mna = tmp_path / "mna.json"
    mna.write_text(json.dumps(mna_records, ensure_ascii=False), encoding="utf-8")
    paths = MergePaths(rows=tmp_path / "merged.jsonl", duplicates=tmp_path / "dups.jsonl",
                       near_duplicates=tmp_path / "near.jsonl", metrics=tmp_path / "m.json")
    write_jsonl(tmp_path / "filtered.jsonl", aihub_rows)
    metrics = run_merge(mna, tmp_path / "filtered.jsonl", MergeParams(near_dup_threshold=near_dup_threshold), paths)
    out = metrics, list(read_jsonl(paths.rows)), list(read_jsonl(paths.duplicates))
    return out + (list(read_jsonl(paths.near_duplicates)),) if with_near else out


def test_near_duplicate_questions_collapse_within_and_across_sources(tmp_path):
    """The original M&A set's pair: 0.83 similar by character 2-3-grams (README)."""
    mna = [{"question": "합병의 두 가지 유형은 무엇인가요?", "answer": "흡수합병과 신설합병입니다.", "source": "상법"},
           {"question": "합병의 두 가지 방식은 무엇인가요?", "answer": "흡수합병과 신설합병 두 가지입니다.", "source": "상법"},
           {"question": "공개매수란 무엇인가요?", "answer": "장외에서 공고하고 주식을 사는 것입니다.", "source": "자본시장법"}]
    rows = [aihub("공개 매수란 무엇인가요?", "불특정 다수에게 공고하여 주식을 매수하는 것입니다."),
            aihub("배당이란 무엇인가요?", "이익을 나누는 것입니다.")]
    metrics, merged, _, near = run(tmp_path, mna, rows, near_dup_threshold=0.8, with_near=True)
    assert [r["messages"][1]["content"] for r in merged] == [
        "합병의 두 가지 유형은 무엇인가요?", "공개매수란 무엇인가요?", "배당이란 무엇인가요?"]
    assert [(p["kept_question"], p["removed_question"], p["kept_source"], p["removed_source"]) for p in near] == [
        ("합병의 두 가지 유형은 무엇인가요?", "합병의 두 가지 방식은 무엇인가요?", "mna", "mna"),
        ("공개매수란 무엇인가요?", "공개 매수란 무엇인가요?", "mna", "aihub")]
    assert near[0]["similarity"] == pytest.approx(0.829, abs=0.001) and near[1]["similarity"] >= 0.8
    assert near[1]["origin"]["file"] == "Other/Other.zip"  # a collapsed row can be found in the download
    assert metrics["near_duplicates_removed"] == 2
    assert metrics["near_duplicates_by_pair"] == {"mna->aihub": 1, "mna->mna": 1}

    # A threshold above both pairs' similarities keeps them; null keeps everything.
    assert run(tmp_path, mna, rows, near_dup_threshold=max(p["similarity"] for p in near) + 0.01)[0][
        "near_duplicates_removed"] == 0
    assert run(tmp_path, mna, rows, near_dup_threshold=None)[0]["near_duplicates_removed"] == 0


def test_near_duplicate_chains_keep_rows_that_are_far_apart(tmp_path):
    from mna_tune.data.merge import collapse_near_duplicates
    from helpers import chat_rows

    rows = chat_rows([("가나다라마바사아자차", "1"), ("가나다라마바사아자카", "2"), ("가나다라마바사아타카", "3")])
    kept, collapsed = collapse_near_duplicates(rows, 0.75)
    sims = {(c["kept_id"], c["removed_id"]): c["similarity"] for c in collapsed}
    assert [r["id"] for r in kept] == [rows[0]["id"], rows[2]["id"]]  # C is near B, but B went, and C is far from A
    assert list(sims) == [(rows[0]["id"], rows[1]["id"])]


def test_exact_duplicates_are_removed_within_and_across_sources(tmp_path):
    mna = [{"question": "간이합병이란?", "answer": "이사회 승인으로 갈음하는 합병입니다.", "source": "상법"},
           {"question": "간이합병이란? ", "answer": "이사회  승인으로 갈음하는 합병입니다.", "source": "상법"}]
    rows = [aihub("간이합병이란?", "이사회 승인으로\n갈음하는 합병입니다."),
            aihub("배당이란?", "이익을 나누는 것입니다."), aihub("배당이란?  ", "이익을 나누는 것입니다.")]
    metrics, merged, dups = run(tmp_path, mna, rows)
    assert [(r["source"], r["messages"][1]["content"]) for r in merged] == [("mna", "간이합병이란?"),
                                                                             ("aihub", "배당이란?")]
    assert metrics["exact_duplicates_removed"] == 3
    assert metrics["exact_duplicates_by_pair"] == {"mna->mna": 1, "mna->aihub": 1, "aihub->aihub": 1}
    assert {d["id"] for d in dups} == {r["id"] for r in merged}


def test_chat_rows_follow_the_design_schema_with_clean_messages(tmp_path):
    _, merged, _ = run(tmp_path, [{"question": "PMI란?", "answer": "인수 후 통합입니다.", "source": "s"}],
                       [aihub("공시란?", "정보를 알리는 것입니다.", category="산업")])
    for row in merged:
        assert set(row) >= {"id", "source", "category", "messages"}
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == SYSTEM_PROMPT
        text = json.dumps(row["messages"], ensure_ascii=False)
        assert "/no_think" not in text and "<think>" not in text and "<|im_" not in text
    assert [(r["source"], r["category"]) for r in merged] == [("mna", "M&A"), ("aihub", "산업")]


@pytest.mark.parametrize("payload, message", [
    ([], "holds no records"),
    ({"question": "q"}, "expected a JSON array"),
    ([{"question": "q", "answer": "a"}, {"question": "q2"}], r"\[1\]: missing key 'answer'"),
    ([{"question": 7, "answer": "a"}], r"\[0\]: 'question' is int, expected string"),
    ([{"question": "q", "answer": "  "}], r"\[0\]: 'answer' is empty"),
    ([{"question": "q", "answer": "a", "source": 3}], r"\[0\]: 'source' is int"),
])
def test_mna_file_problems_name_the_row_and_key(tmp_path, payload, message):
    path = tmp_path / "mna.json"
    path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(InputError, match=message) as err:
        read_mna(path)
    assert str(path) in str(err.value)


def test_mna_file_not_json_or_missing(tmp_path):
    path = tmp_path / "mna.json"
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        read_mna(path)
    with pytest.raises(InputError, match="not found"):
        read_mna(tmp_path / "none.json")
