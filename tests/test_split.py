import pytest

from helpers import repo_params
from mna_tune.chat import build_messages
from mna_tune.data.split import run_split
from mna_tune.data.text import content_id
from mna_tune.params import SplitPaths
from mna_tune.workspace import read_jsonl, write_jsonl


def words(seed, count=3):
    """Random Hangul words: questions that share no template, so none are near-twins."""
    import random

    rng = random.Random(seed)
    return " ".join("".join(chr(0xAC00 + rng.randrange(11172)) for _ in range(4)) for _ in range(count))


def rows(n, prefix="질문"):
    out = []
    for i in range(n):
        q, a = f"{words(f'{prefix}{i}')}?", f"{prefix} {i}번의 답입니다."
        out.append({"id": content_id(q, a), "source": "mna", "category": "M&A", "messages": build_messages(q, a)})
    return out


def run(tmp_path, data, **params):
    out = tmp_path / "processed"
    paths = SplitPaths(
        train=out / "train.jsonl",
        val=out / "val.jsonl",
        test=out / "test.jsonl",
        leakage=tmp_path / "leakage.jsonl",
        summary=tmp_path / "m.json",
        data_report=tmp_path / "report.json",
        rows_plot=tmp_path / "rows.csv",
        lengths_plot=tmp_path / "lengths.csv",
    )
    write_jsonl(tmp_path / "merged.jsonl", data)
    metrics = run_split(repo_params(split=params).split, tmp_path / "merged.jsonl", paths)
    return metrics, {name: list(read_jsonl(getattr(paths, name))) for name in ("train", "val", "test")}


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
        q = f"{words(i)}?"
        for variant, answer in enumerate(["첫 번째 답", "두 번째 답", "세 번째 답"]):
            question = q if variant != 1 else f"  {q.replace(' ', '  ')} "
            data.append(
                {
                    "id": content_id(question, answer),
                    "source": "aihub",
                    "category": "사회",
                    "messages": build_messages(question, answer),
                }
            )
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


def test_near_twins_share_a_split_and_the_leakage_report_shows_none(tmp_path):
    data = rows(300)
    twins = [
        ("합병의 두 가지 유형은 무엇인가요?", "흡수합병과 신설합병입니다."),
        ("합병의 두 가지 방식은 무엇인가요?", "흡수합병과 신설합병 두 가지입니다."),
    ]
    for k in range(40):  # near-twin pairs: the same question with a different number
        twins += [(f"{words(f'twin{k}')} 제{k}조 1항은?", "가"), (f"{words(f'twin{k}')} 제{k}조 1항이란?", "나")]
    data += [
        {"id": content_id(q, a), "source": "mna", "category": "M&A", "messages": build_messages(q, a)} for q, a in twins
    ]
    metrics, splits = run(tmp_path, data, leakage_threshold=0.8)
    where = placement(splits)
    for first, second in zip(twins[::2], twins[1::2]):
        assert where[content_id(*first)] == where[content_id(*second)]
    leakage = metrics["leakage"]
    assert leakage["above_threshold"] == 0 and leakage["held_out_rows"] == len(splits["val"]) + len(splits["test"])
    assert leakage["groups_with_twins"] >= 41 and leakage["rows_moved_to_their_twins"] > 0

    report = list(read_jsonl(tmp_path / "leakage.jsonl"))
    train_ids = {row["id"] for row in splits["train"]}
    assert {entry["id"] for entry in report} == {row["id"] for row in splits["val"] + splits["test"]}
    assert all(entry["nearest_train_id"] in train_ids and entry["similarity"] < 0.8 for entry in report)

    # The same rows placed by their own question alone would leak: the report's check can fail.
    from mna_tune.data.split import assign_split

    naive = {content_id(q, a): assign_split(q, repo_params().split) for q, a in twins}
    assert any(naive[content_id(*f)] != naive[content_id(*s)] for f, s in zip(twins[::2], twins[1::2]))


def test_a_chain_of_templated_questions_is_refused(tmp_path):
    data = [
        {
            "id": content_id(f"질문 {i}번은 무엇인가요?", "답"),
            "source": "mna",
            "category": "M&A",
            "messages": build_messages(f"질문 {i}번은 무엇인가요?", "답"),
        }
        for i in range(100)
    ]
    with pytest.raises(ValueError, match="chain into one near-twin group.*raise split.leakage_threshold"):
        run(tmp_path, data)


def test_templated_questions_are_split_within_the_budgets(tmp_path, monkeypatch):
    """Questions from a 40-word vocabulary: the pair search and the nearest-train lookup both
    run bounded (said in the metrics); repeated questions still share a split and every
    held-out question still gets a leakage entry."""
    import random

    from mna_tune.data import similarity, split

    rng = random.Random(3)
    vocabulary = [f"{a}{b}" for a in "합병분할인수주식매수공시" for b in "가나다"][:40]
    faq = [" ".join(rng.sample(vocabulary, 6)) + "은 무엇인가요?" for _ in range(100)]
    questions = [
        rng.choice(faq) if i % 4 == 0 else " ".join(rng.sample(vocabulary, 6)) + "은 무엇인가요?" for i in range(6000)
    ]
    data = [
        {
            "id": content_id(q, f"답 {i}"),
            "source": "aihub",
            "category": "사회",
            "messages": build_messages(q, f"답 {i}"),
        }
        for i, q in enumerate(questions)
    ]
    monkeypatch.setattr(similarity.search, "PAIR_BUDGET", 100_000)
    monkeypatch.setattr(split, "NEAREST_WORK", 1_000)
    metrics, splits = run(tmp_path, data, leakage_threshold=0.95)
    leakage = metrics["leakage"]
    assert leakage["pair_search"]["exact"] is False and leakage["pair_search"]["candidate_pairs"] <= 100_000
    assert leakage["pair_search"]["candidate_pairs_skipped"] > 1_000_000
    assert leakage["nearest_train_search"] == "candidates"
    where = {}
    for name, part in splits.items():
        for row in part:
            where.setdefault(row["messages"][1]["content"], set()).add(name)
    assert all(len(names) == 1 for names in where.values())  # repeats of a question never straddle splits
    report = list(read_jsonl(tmp_path / "leakage.jsonl"))
    assert len(report) == leakage["held_out_rows"] == len(splits["val"]) + len(splits["test"])
    assert leakage["above_threshold"] == 0 and sum(e["nearest_train_id"] is not None for e in report) > len(report) / 2
