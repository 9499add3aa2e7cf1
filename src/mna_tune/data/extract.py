"""extract stage: AI Hub download (zipped or unzipped) -> one JSON line per QA row.

Non-QA source files are listed in the report and skipped; a bad archive, entry or
record stops the stage (`fail`) or goes to the rejects file with its reason (`skip`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .aihub_layout import iter_units
from .aihub_records import label_rows, other_rows, parse_json, sniff_label_kind
from .errors import InputError
from .io import atomic_open, dumps_line, write_json
from .text import content_id


@dataclass(frozen=True)
class ExtractPaths:
    rows: Path = Path("data/interim/extracted.jsonl")
    rejects: Path = Path("data/interim/extract_rejects.jsonl")
    report: Path = Path("data/interim/extract_report.json")
    metrics: Path = Path("metrics/extract.json")


def run_extract(aihub_dir: Path, on_error: str, paths: ExtractPaths = ExtractPaths()) -> dict:
    shadowed: list[str] = []
    report: dict[str, list] = {"qa_units": [], "source_files": [], "ignored_files": [], "unrecognised_files": [],
                               "shadowed_folders": shadowed}
    by_kind: Counter = Counter()
    by_subset: Counter = Counter()
    stats: dict = {}
    rejected = 0

    with atomic_open(paths.rows) as rows_out, atomic_open(paths.rejects) as rejects_out:

        def reject(problem: InputError) -> None:
            nonlocal rejected
            if on_error == "fail":
                raise problem
            rejects_out.write(dumps_line(problem.as_reject()))
            rejected += 1

        progress = tqdm(iter_units(Path(aihub_dir), shadowed), desc="extract", unit=" files")
        for unit in progress:
            if isinstance(unit, InputError):
                reject(unit)
                continue
            if unit.kind in ("source", "ignored"):
                report["source_files" if unit.kind == "source" else "ignored_files"].append(unit.where)
                continue
            try:
                parsed = parse_json(unit)
            except InputError as problem:
                reject(problem)
                continue
            kind = unit.kind if unit.kind != "label" else sniff_label_kind(parsed)
            if kind is None:
                report["unrecognised_files"].append(unit.where)
                continue
            items = other_rows(unit, parsed, stats) if kind == "other" else label_rows(unit, parsed, kind)
            count = 0
            for item in items:
                if isinstance(item, InputError):
                    reject(item)
                    continue
                item["id"] = content_id(item["question"], item["answer"])
                rows_out.write(dumps_line(item))
                by_kind[kind] += 1
                by_subset[item["subset"]] += 1
                count += 1
            report["qa_units"].append({"unit": unit.where, "kind": kind, "subset": unit.subset, "rows": count})
            progress.set_postfix(rows=sum(by_kind.values()))

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
