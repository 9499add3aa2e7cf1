import json

import pytest

from mna_tune.chat import SYSTEM_PROMPT
from mna_tune.data.errors import InputError
from mna_tune.data.io import read_jsonl, write_jsonl
from mna_tune.data.merge import MergePaths, run_merge
from mna_tune.data.mna import read_mna


def aihub(question, answer, category="사회"):
    return {"question": question, "answer": answer, "category": category, "file": "Other/Other.zip",
            "entry": "/OT.json", "record": "[0]", "subset": "Other", "kind": "other", "score": 50}


def run(tmp_path, mna_records, aihub_rows):
    mna = tmp_path / "mna.json"
    mna.write_text(json.dumps(mna_records, ensure_ascii=False), encoding="utf-8")
    paths = MergePaths(aihub_rows=tmp_path / "filtered.jsonl", merged=tmp_path / "merged.jsonl",
                       duplicates=tmp_path / "dups.jsonl", metrics=tmp_path / "m.json")
    write_jsonl(paths.aihub_rows, aihub_rows)
    metrics = run_merge(mna, paths)
    return metrics, list(read_jsonl(paths.merged)), list(read_jsonl(paths.duplicates))


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
