"""The memorisation probe: which training rows it asks (a seeded rule, not file order) and
how it counts an answer as reproduced."""

from __future__ import annotations

from helpers import QA, chat_rows
from mna_tune.evaluation.probes import memorisation, probe_rows
from mna_tune.workspace import write_jsonl


def test_the_probe_rows_follow_the_seed_not_the_file_order(tmp_path):
    rows = chat_rows(QA)
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", rows[::-1])
    chosen = [row["id"] for row in probe_rows(tmp_path / "a.jsonl", 2, 42)]
    assert chosen == [row["id"] for row in probe_rows(tmp_path / "b.jsonl", 2, 42)]
    assert len(set(chosen)) == 2
    others = {tuple(row["id"] for row in probe_rows(tmp_path / "a.jsonl", 2, seed)) for seed in range(6)}
    assert len(others) > 1  # another seed, other rows
    assert len(probe_rows(tmp_path / "a.jsonl", 10, 42)) == len(QA)  # more asked than there are: all


def test_an_answer_counts_only_when_it_is_the_training_answer():
    rows = chat_rows(QA[:3])
    answers = [
        "<think>\n\n</think>\n\n" + QA[0][1],  # the think block is not part of the answer
        QA[1][1].replace(" ", "  ") + "\n",  # runs of whitespace are one space
        QA[2][1][:-1],  # one character short
    ]
    probe = memorisation(rows, answers)
    assert probe["exact"] == 2 and probe["rows"] == 3 and probe["exact_share"] == round(2 / 3, 6)
    assert probe["first_miss"]["id"] == rows[2]["id"] and probe["first_miss"]["answered"] == QA[2][1][:-1]
    assert memorisation(rows[:1], [QA[0][1]])["first_miss"] is None
