"""split stage: deterministic, stable under additions, leak-free on near-twin questions.

Questions at least split.leakage_threshold similar (similarity.py) form groups, and a
group's split is a function of `split.seed` and the smallest question key in the group:
near-twins always land together, and a row without twins is placed by its own question,
so adding or editing other rows never moves it. The leakage report lists, for each val and
test question, its nearest train question and their similarity.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from ..chat import question_of
from ..params import Params, SplitParams, SplitPaths
from ..workspace import atomic_open, dumps_line, read_jsonl, write_json, write_jsonl
from .similarity import components, nearest, similar_pairs
from .text import question_key, unit_interval

SPLITS = ("train", "val", "test")


def split_of_key(key: str, params: SplitParams) -> str:
    position = unit_interval(params.seed, key)
    if position < params.test_size:
        return "test"
    if position < params.test_size + params.val_size:
        return "val"
    return "train"


def assign_split(question: str, params: SplitParams) -> str:
    return split_of_key(question_key(question), params)


def group_keys(questions: list[str], threshold: float) -> tuple[list[str], dict]:
    """Each question's placement key: the smallest question key of its near-twin group."""
    pairs = similar_pairs(questions, threshold)
    roots = components(len(questions), pairs)
    own = [question_key(q) for q in questions]
    smallest: dict[int, str] = {}
    for index, root in enumerate(roots):
        smallest[root] = min(smallest.get(root, own[index]), own[index])
    sizes = Counter(roots)
    stats = {"near_twin_pairs": len(pairs), "groups_with_twins": sum(1 for n in sizes.values() if n > 1),
             "largest_group": max(sizes.values(), default=0)}
    return [smallest[root] for root in roots], stats


def leakage_report(rows: list[dict], names: list[str], questions: list[str], threshold: float):
    train = [i for i, name in enumerate(names) if name == "train"]
    held_out = [i for i, name in enumerate(names) if name != "train"]
    found = nearest([questions[i] for i in held_out], [questions[i] for i in train])
    report = []
    for i, (best, similarity) in zip(held_out, found):
        twin = train[best] if best is not None else None
        report.append({"id": rows[i]["id"], "split": names[i], "question": questions[i],
                       "nearest_train_id": rows[twin]["id"] if twin is not None else None,
                       "nearest_train_question": questions[twin] if twin is not None else None,
                       "similarity": similarity})
    similarities = [entry["similarity"] for entry in report]
    summary = {"threshold": threshold, "held_out_rows": len(report),
               "above_threshold": sum(value >= threshold for value in similarities),
               "max_similarity": max(similarities, default=0.0),
               "mean_similarity": round(sum(similarities) / len(similarities), 4) if similarities else 0.0}
    return report, summary


def _refuse_giant_group(keys: list[str], questions: list[str], params: SplitParams) -> None:
    """Near-twins chain (A~B, B~C, ...). Templated questions can chain into one group big
    enough to swallow a split; then no leak-free split exists at this threshold."""
    sizes = Counter(keys)
    key, size = sizes.most_common(1)[0] if sizes else ("", 0)
    if len(keys) >= 20 and size > max(2, params.test_size * len(keys)):
        members = [q for q, k in zip(questions, keys) if k == key][:3]
        raise ValueError(
            f"split: {size} of {len(keys)} questions chain into one near-twin group at split.leakage_threshold "
            f"{params.leakage_threshold} (e.g. {' / '.join(repr(m) for m in members)}), more than the test share; "
            "raise split.leakage_threshold"
        )


def run_split(params: SplitParams, merged: Path, paths: SplitPaths) -> dict:
    rows = list(read_jsonl(merged))  # merged rows: the filtered set, small enough to hold
    questions = [question_of(row["messages"]) for row in rows]
    keys, group_stats = group_keys(questions, params.leakage_threshold)
    _refuse_giant_group(keys, questions, params)
    names = [split_of_key(key, params) for key in keys]
    moved = sum(name != assign_split(q, params) for name, q in zip(names, questions))
    counts = Counter(names)
    empty = [name for name in ("train", "test") if counts[name] == 0]
    if empty:
        raise ValueError(
            f"split left {' and '.join(empty)} empty ({len(rows)} rows in {merged}); "
            "add data or raise split.test_size"
        )
    report, leakage = leakage_report(rows, names, questions, params.leakage_threshold)
    by_source: Counter = Counter(f"{name}_{row['source']}" for name, row in zip(names, rows))
    with ExitStack() as stack:  # all three files are committed together, or none
        handles = {name: stack.enter_context(atomic_open(getattr(paths, name))) for name in SPLITS}
        for name, row in zip(names, rows):
            handles[name].write(dumps_line(row))
    write_jsonl(paths.leakage, report)
    metrics = {"rows": {name: counts[name] for name in SPLITS}, "rows_by_source": dict(sorted(by_source.items())),
               "leakage": {**leakage, **group_stats, "rows_moved_to_their_twins": moved}}
    write_json(paths.metrics, metrics)
    print("split: " + ", ".join(f"{name} {counts[name]}" for name in SPLITS)
          + f"; {leakage['above_threshold']} held-out questions with a train twin >= {params.leakage_threshold} "
          f"({moved} rows moved to their twins' split)")
    return metrics


def main(params: Params, args=None) -> None:
    from .report import write_data_report

    run_split(params.split, params.paths.merge.rows, params.paths.split)
    write_data_report(params)
