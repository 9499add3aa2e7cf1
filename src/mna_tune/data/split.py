"""split stage: deterministic, stable under additions, leak-free on near-twin questions.

Questions at least split.leakage_threshold similar (the similarity package) form groups, and a
group's split is a function of `split.seed` and the smallest question key in the group:
near-twins always land together, and a row without twins is placed by its own question,
so adding or editing other rows never moves it. The leakage report lists, for each val and
test question, its nearest train question and their similarity.

Streams the merged rows twice (questions first, then the rows to their split files), so
memory holds n-gram vectors and a few numbers per row, never the rows.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np

from ..chat import question_of
from ..params import Params, SplitParams, SplitPaths
from ..workspace import atomic_open, dumps_line, read_jsonl, require_input, write_json, write_jsonl
from .parallel import default_processes, ordered_map, worker_pool
from .similarity import (
    N_FEATURES,
    VECTOR_CHUNK,
    BestNeighbours,
    Items,
    ItemsBuilder,
    components,
    map_large_arrays,
    near_groups,
    nearest_rows,
    release_memory,
    similar_pairs,
    vectorize_chunk,
)
from .text import question_key, unit_interval

SPLITS = ("train", "val", "test")
NEAREST_WORK = 2_000_000_000  # multiply-adds of the exact nearest-train lookup; above, the pair search's candidates
NEAREST_ENTRIES = 20_000_000  # n-gram entries of all questions the exact lookup holds as float64 (240 MB)
PARTNERS = 8  # candidates kept per question for the bounded nearest-train lookup


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
    """Each question's placement key: the smallest question key of its near-twin group
    (for questions held in memory; the stage streams, with the same rule)."""
    pairs = similar_pairs(questions, threshold)
    roots = components(len(questions), pairs)
    own = [question_key(q) for q in questions]
    smallest: dict[int, str] = {}
    for index, root in enumerate(roots):
        smallest[root] = min(smallest.get(root, own[index]), own[index])
    sizes = Counter(roots)
    stats = {
        "near_twin_pairs": len(pairs),
        "groups_with_twins": sum(1 for n in sizes.values() if n > 1),
        "largest_group": max(sizes.values(), default=0),
    }
    return [smallest[root] for root in roots], stats


def _feature_counts(items: Items, weight: np.ndarray) -> np.ndarray:
    """Per n-gram, the summed weight of the items holding it (a million items at a time)."""
    counts = np.zeros(N_FEATURES)
    for start in range(0, items.count, 1_000_000 // 64):
        end = min(start + 1_000_000 // 64, items.count)
        segment = items.indices[items.indptr[start] : items.indptr[end]]
        counts += np.bincount(
            segment,
            weights=np.repeat(weight[start:end].astype(np.float64), items.sizes[start:end]),
            minlength=N_FEATURES,
        )
    return counts


def _nearest_train(items: Items, item_split: np.ndarray, partners: BestNeighbours | None) -> tuple[dict, str]:
    """For each held-out item, (its nearest train row, similarity) or (None, 0.0), and how it
    was found: `exact` (every train question compared) or `candidates` (among the compared
    pairs of the bounded search: a lower bound when no train twin is above the threshold)."""
    held_out = np.flatnonzero(item_split != 0)
    train = np.flatnonzero(item_split == 0)  # ascending: the earliest train row first on ties
    found: dict[int, tuple[int | None, float]] = {}
    work = float(
        _feature_counts(items, np.where(item_split != 0, items.multiplicity, 0))
        @ _feature_counts(items, np.where(item_split == 0, items.multiplicity, 0))
    )
    if (work <= NEAREST_WORK and len(items.indices) <= NEAREST_ENTRIES) or partners is None:
        if not len(train):
            return {int(item): (None, 0.0) for item in held_out}, "exact"
        norms = 1.0 / np.sqrt(np.maximum(items.sizes, 1).astype(np.float64))
        matrix = items.matrix(np.repeat(norms, items.sizes))  # L2-normalised, as sklearn's normalize()
        for item, (best, similarity) in zip(held_out.tolist(), nearest_rows(matrix[held_out], matrix[train])):
            found[item] = (int(items.first_row[train[best]]) if best is not None else None, similarity)
        return found, "exact"
    for item in held_out.tolist():
        found[item] = (None, 0.0)
        for other, similarity in partners.of(item):  # most similar first, then the earliest
            if item_split[other] == 0:
                found[item] = (int(items.first_row[other]), round(similarity, 4))
                break
    return found, "candidates"


def _refuse_giant_group(label_of_row: np.ndarray, merged: Path, params: SplitParams) -> None:
    """Near-twins chain (A~B, B~C, ...). Templated questions can chain into one group big
    enough to swallow a split; then no leak-free split exists at this threshold."""
    rows = len(label_of_row)
    if rows < 20:
        return
    sizes = np.bincount(label_of_row)
    label = int(sizes.argmax())
    size = int(sizes[label])
    if size > max(2, params.test_size * rows):
        wanted = set(np.flatnonzero(label_of_row == label)[:3].tolist())
        members = [question_of(row["messages"]) for index, row in enumerate(read_jsonl(merged)) if index in wanted]
        raise ValueError(
            f"split: {size} of {rows} questions chain into one near-twin group at split.leakage_threshold "
            f"{params.leakage_threshold} (e.g. {' / '.join(repr(m) for m in members)}), more than the test share; "
            "raise split.leakage_threshold"
        )


def _numbered_lines(path: Path, size: int):
    """Batches of (line number, line) of a JSON Lines file, blank lines skipped."""
    batch: list[tuple[int, bytes]] = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                batch.append((number, line))
                if len(batch) == size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def _questions(batch: list[tuple[int, bytes]], path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In a worker: the question keys (as integers) and n-gram vectors of some merged rows."""
    import orjson

    questions = []
    for number, line in batch:
        try:
            questions.append(question_of(orjson.loads(line)["messages"]))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON line: {exc}") from None
    keys = np.asarray([int(question_key(question), 16) for question in questions], np.uint64)
    return (keys, *vectorize_chunk(questions))


def run_split(params: SplitParams, merged: Path, paths: SplitPaths, processes: int | None = None) -> dict:
    merged = require_input(merged, "merge", "the merged rows")
    processes = processes or default_processes()
    map_large_arrays()
    builder = ItemsBuilder()
    keys = []
    with worker_pool(processes) as pool:
        for row_keys, indptr, indices in ordered_map(
            partial(_questions, path=str(merged)), _numbered_lines(merged, VECTOR_CHUNK), processes, pool=pool
        ):
            keys.append(row_keys)
            builder.add(indptr, indices)
    items = builder.finish()
    own_keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    del keys
    rows = len(own_keys)
    # the bounded nearest-train lookup needs the search's candidates: keep some when the exact
    # lookup could be too costly (its cost is known only once the splits are)
    everywhere = _feature_counts(items, items.multiplicity)
    costly = float(everywhere @ everywhere) / 4 > NEAREST_WORK or len(items.indices) > NEAREST_ENTRIES
    partners = BestNeighbours(items.count, PARTNERS) if costly else None
    release_memory()
    labels, near_pairs, search = near_groups(items, params.leakage_threshold, threads=processes, partners=partners)
    label_of_row = labels[items.item_of_row]
    smallest = np.full(items.count, np.iinfo(np.uint64).max, np.uint64)
    np.minimum.at(smallest, label_of_row, own_keys)
    group_sizes = np.bincount(label_of_row, minlength=items.count)
    group_stats = {
        "near_twin_pairs": near_pairs,
        "groups_with_twins": int((group_sizes > 1).sum()),
        "largest_group": int(group_sizes.max()) if rows else 0,
    }
    _refuse_giant_group(label_of_row, merged, params)
    split_of_label = {
        label: SPLITS.index(split_of_key(f"{int(smallest[label]):016x}", params))
        for label in np.flatnonzero(group_sizes).tolist()
    }
    code_of_label = np.zeros(items.count, np.int8)
    code_of_label[list(split_of_label)] = list(split_of_label.values())
    names = code_of_label[label_of_row]
    grouped = np.flatnonzero(smallest[label_of_row] != own_keys)  # rows placed by a twin's key
    moved = sum(
        names[row] != SPLITS.index(split_of_key(f"{int(own_keys[row]):016x}", params)) for row in grouped.tolist()
    )
    counts = Counter({name: int((names == code).sum()) for code, name in enumerate(SPLITS)})
    empty = [name for name in ("train", "test") if counts[name] == 0]
    if empty:
        raise ValueError(
            f"split left {' and '.join(empty)} empty ({rows} rows in {merged}); add data or raise split.test_size"
        )
    item_split = np.zeros(items.count, np.int8)
    item_split[items.item_of_row] = names
    nearest, how = _nearest_train(items, item_split, partners)
    item_of_row = items.item_of_row
    del items, partners, labels
    release_memory()

    # second pass: each row to its split file; what the leakage report needs on the way
    wanted_train = {row for row, _ in nearest.values() if row is not None}
    train_rows: dict[int, tuple[str, str]] = {}
    held_out: list[tuple[str, str, str, tuple[int | None, float]]] = []  # (split, id, question, nearest)
    by_source: Counter = Counter()
    with ExitStack() as stack:  # all three files are committed together, or none
        handles = {name: stack.enter_context(atomic_open(getattr(paths, name))) for name in SPLITS}
        for index, row in enumerate(read_jsonl(merged)):
            name = SPLITS[names[index]]
            handles[name].write(dumps_line(row))
            by_source[f"{name}_{row['source']}"] += 1
            if name != "train":
                held_out.append((name, row["id"], question_of(row["messages"]), nearest[int(item_of_row[index])]))
            elif index in wanted_train:
                train_rows[index] = (row["id"], question_of(row["messages"]))
    similarities: list[float] = []

    def report():
        for name, row_id, question, (twin, similarity) in held_out:
            similarities.append(similarity)
            yield {
                "id": row_id,
                "split": name,
                "question": question,
                "nearest_train_id": train_rows[twin][0] if twin is not None else None,
                "nearest_train_question": train_rows[twin][1] if twin is not None else None,
                "similarity": similarity,
            }

    write_jsonl(paths.leakage, report())
    threshold = params.leakage_threshold
    leakage = {
        "threshold": threshold,
        "held_out_rows": len(similarities),
        "above_threshold": sum(value >= threshold for value in similarities),
        "max_similarity": max(similarities, default=0.0),
        "mean_similarity": round(sum(similarities) / len(similarities), 4) if similarities else 0.0,
    }
    metrics = {
        "rows": {name: counts[name] for name in SPLITS},
        "rows_by_source": dict(sorted(by_source.items())),
        "leakage": {
            **leakage,
            **group_stats,
            "rows_moved_to_their_twins": int(moved),
            "nearest_train_search": how,
            "pair_search": search.as_metrics(),
        },
    }
    write_json(paths.summary, metrics)
    print(
        "split: "
        + ", ".join(f"{name} {counts[name]}" for name in SPLITS)
        + f"; {leakage['above_threshold']} held-out questions with a train twin >= {params.leakage_threshold} "
        f"({moved} rows moved to their twins' split)"
        + ("" if search.exact else f"; pair search bounded: {search.skipped_pairs} candidate pairs skipped")
    )
    return metrics


def main(params: Params, args=None) -> None:
    from .report import write_data_report

    run_split(params.split, params.paths.merge.rows, params.paths.split)
    write_data_report(params)
