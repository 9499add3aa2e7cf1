"""extract stage: AI Hub download (zipped or unzipped) -> one Parquet row per QA row.

Units (files, archive entries) are parsed on both cores, a few at a time, and written in
their walk order, so the output is the same for any number of processes.

Non-QA source files are listed in the report and skipped; a bad archive, entry or
record stops the stage (`fail`) or goes to the rejects file with its reason (`skip`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from .aihub_layout import Unit, iter_units
from .aihub_records import label_rows, other_columns, other_rows, parse_json, sniff_label_kind
from .columnar import EXTRACTED, ParquetOut, table
from .errors import InputError
from .io import atomic_open, dumps_line, write_json
from .parallel import default_processes, ordered_map


@dataclass(frozen=True)
class ExtractPaths:
    rows: Path = Path("data/interim/extracted.parquet")
    rejects: Path = Path("data/interim/extract_rejects.jsonl")
    report: Path = Path("data/interim/extract_report.json")
    metrics: Path = Path("metrics/extract.json")


def _problem(reject: dict) -> InputError:
    return InputError(reject["file"], reject["reason"], reject["entry"], reject["record"], reject["raw"])


def _not_for_workers(item) -> bool:
    return isinstance(item, InputError) or item.kind in ("source", "ignored")


def read_unit(unit: Unit) -> dict:
    """Parse one unit into rows and rejects (runs in a worker process). Errors travel as
    dicts: InputError's constructor does not survive pickling."""
    try:
        parsed = parse_json(unit)
    except InputError as problem:
        return {"unit": unit, "kind": None, "rows": [], "rejects": [problem.as_reject()], "stats": {}}
    kind = unit.kind if unit.kind != "label" else sniff_label_kind(parsed)
    if kind is None:
        return {"unit": unit, "kind": None, "rows": [], "rejects": [], "stats": {}, "unrecognised": True}
    stats: dict = {}
    columns = other_columns(unit, parsed, stats) if kind == "other" else None
    if columns is not None:  # the usual case for the bulk of the download
        return {"unit": unit, "kind": kind, "table": pa.Table.from_pydict(columns, schema=EXTRACTED),
                "count": len(columns["question"]), "by_category": Counter(columns["category"]), "rejects": [],
                "stats": stats}
    stats = {}
    items = other_rows(unit, parsed, stats) if kind == "other" else label_rows(unit, parsed, kind)
    rows, rejects = [], []
    for item in items:
        if isinstance(item, InputError):
            rejects.append(item.as_reject())
            rows.append(None)  # keeps the order of rows and rejects for `fail`
        else:
            rows.append(item)
    if rejects:
        return {"unit": unit, "kind": kind, "rows": rows, "rejects": rejects, "stats": stats}
    # The usual case: the worker builds the Arrow table itself, so one table crosses back
    # instead of thousands of dicts to pickle and unpickle.
    return {"unit": unit, "kind": kind, "table": table(rows, EXTRACTED), "count": len(rows),
            "by_category": Counter(row["category"] for row in rows), "rejects": [], "stats": stats}


def run_extract(aihub_dir: Path, on_error: str, paths: ExtractPaths = ExtractPaths(),
                processes: int | None = None) -> dict:
    shadowed: list[str] = []
    report: dict[str, list] = {"qa_units": [], "source_files": [], "ignored_files": [], "unrecognised_files": [],
                               "shadowed_folders": shadowed}
    by_kind: Counter = Counter()
    by_subset: Counter = Counter()
    by_category: Counter = Counter()
    stats: Counter = Counter()
    rejected = 0
    processes = processes or default_processes()

    with ParquetOut(paths.rows, EXTRACTED) as rows_out, atomic_open(paths.rejects) as rejects_out:

        def reject(problem: InputError) -> None:
            nonlocal rejected
            if on_error == "fail":
                raise problem
            rejects_out.write(dumps_line(problem.as_reject()))
            rejected += 1

        progress = tqdm(desc="extract", unit=" files")
        units = iter_units(Path(aihub_dir), shadowed)
        for result in ordered_map(read_unit, units, processes, passthrough=_not_for_workers):
            progress.update(1)
            if isinstance(result, InputError):
                reject(result)
                continue
            if isinstance(result, Unit):  # a non-QA source file, or junk
                report["source_files" if result.kind == "source" else "ignored_files"].append(result.where)
                continue
            unit = result["unit"]
            if result.get("unrecognised"):
                report["unrecognised_files"].append(unit.where)
                continue
            if result["kind"] is None:  # the whole unit failed to parse
                reject(_problem(result["rejects"][0]))
                continue
            stats.update(result["stats"])
            if "table" in result:
                rows_out.write(result["table"])
                count = result["count"]
                by_kind[result["kind"]] += count
                by_subset[unit.subset] += count
                by_category.update(result["by_category"])
                report["qa_units"].append({"unit": unit.where, "kind": result["kind"], "subset": unit.subset,
                                           "rows": count})
                continue
            problems = iter(result["rejects"])
            good = []
            for item in result["rows"]:
                if item is None:
                    reject(_problem(next(problems)))
                    continue
                good.append(item)
                by_kind[result["kind"]] += 1
                by_subset[item["subset"]] += 1
                by_category[item["category"]] += 1
            rows_out.write(table(good, EXTRACTED))
            count = len(good)
            report["qa_units"].append({"unit": unit.where, "kind": result["kind"], "subset": unit.subset,
                                       "rows": count})
            progress.set_postfix(rows=sum(by_kind.values()))
        progress.close()

        total = sum(by_kind.values())
        if total == 0:
            raise InputError(
                str(aihub_dir),
                f"no QA rows found ({len(report['source_files'])} non-QA source files, "
                f"{len(report['ignored_files'])} ignored, {len(report['unrecognised_files'])} unrecognised, "
                f"{rejected} rejected); is data.aihub_dir the root of an AI Hub 71748 download?",
            )

    metrics = {
        "rows": total,
        "rows_by_kind": dict(sorted(by_kind.items())),
        "rows_by_subset": dict(sorted(by_subset.items())),
        "rows_by_category": dict(sorted(by_category.items())),
        "rejected": rejected,
        "qa_files": len(report["qa_units"]),
        "source_files_skipped": len(report["source_files"]),
        "ignored_files": len(report["ignored_files"]),
        "unrecognised_files": len(report["unrecognised_files"]),
        "shadowed_folders": len(shadowed),
        "contents_items_without_qa": stats.get("contents_items_without_qa", 0),
    }
    write_json(paths.report, report)
    write_json(paths.metrics, metrics)
    print(f"extract: {total} QA rows from {len(report['qa_units'])} files, {rejected} rejected, "
          f"{len(report['source_files'])} non-QA source files skipped")
    return metrics
