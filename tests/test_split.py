import pytest

from mna_tune.chat import build_messages
from mna_tune.data.io import read_jsonl, write_jsonl
from mna_tune.data.split import SplitPaths, run_split
from mna_tune.data.text import content_id
from mna_tune.params import SplitParams


def rows(n, prefix="질문"):
    out = []
    for i in range(n):
        q, a = f"{prefix} {i}번은 무엇인가요?", f"{prefix} {i}번의 답입니다."
        out.append({"id": content_id(q, a), "source": "mna", "category": "M&A", "messages": build_messages(q, a)})
    return out


def run(tmp_path, data, **params):
    paths = SplitPaths(merged=tmp_path / "merged.jsonl", out_dir=tmp_path / "processed", metrics=tmp_path / "m.json")
    write_jsonl(paths.merged, data)
    metrics = run_split(SplitParams(**params), paths)
    return metrics, {name: list(read_jsonl(paths.out_dir / f"{name}.jsonl")) for name in ("train", "val", "test")}


def placement(splits):
    return {row["id"]: name for name, part in splits.items() for row in part}


def test_split_is_deterministic_and_sized_by_params(tmp_path):
    metrics, first = run(tmp_path, rows(1000), seed=3, val_size=0.1, test_size=0.2)
    _, second = run(tmp_path, rows(1000), seed=3, val_size=0.1, test_size=0.2)
    assert first == second
    assert sum(metrics["rows"].values()) == 1000
    assert 150 < metrics["rows"]["test"] < 250 and 60 < metrics["rows"]["val"] < 140


def test_adding_rows_never_moves_existing_rows(tmp_path):
    _, before = run(tmp_path, rows(300))
    _, after = run(tmp_path, rows(300) + rows(200, prefix="추가"))
    old, new = placement(before), placement(after)
    assert all(new[row_id] == split for row_id, split in old.items())


def test_seed_changes_the_assignment(tmp_path):
    _, a = run(tmp_path, rows(300), seed=1)
    _, b = run(tmp_path, rows(300), seed=2)
    assert placement(a) != placement(b)


def test_identical_normalised_questions_land_in_one_split(tmp_path):
    data = []
    for i in range(200):
        q = f"합병 질문 {i}?"
        for variant, answer in enumerate(["첫 번째 답", "두 번째 답", "세 번째 답"]):
            question = q if variant != 1 else f"  {q.replace(' ', '  ')} "
            data.append({"id": content_id(question, answer), "source": "aihub", "category": "사회",
                         "messages": build_messages(question, answer)})
    _, splits = run(tmp_path, data)
    where = {}
    for name, part in splits.items():
        for row in part:
            key = " ".join(row["messages"][1]["content"].split())
            where.setdefault(key, set()).add(name)
    assert all(len(names) == 1 for names in where.values())


def test_empty_test_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="split left test empty"):
        run(tmp_path, rows(1), test_size=0.01, val_size=0.0)
    assert not list((tmp_path / "processed").glob("*.jsonl"))  # all three files or none
