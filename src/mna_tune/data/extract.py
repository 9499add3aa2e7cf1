"""extract stage: AI Hub download (zipped or unzipped) -> one Parquet row per QA row.

Units (files, archive entries) are parsed on both cores, a few at a time, and written in
their walk order, so the output is the same for any number of processes.

Non-QA source files are listed in the report and skipped; a bad archive, entry or
record stops the stage (`fail`) or goes to the rejects file with its reason (`skip`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from ..errors import InputError
from ..params import ExtractPaths, Params
from ..workspace import atomic_open, dumps_line, write_json
from .aihub_layout import Unit, iter_units
from .aihub_records import (
    label_rows,
    other_columns,
    other_rows,
    parse_json,
    sniff_label_kind,
)
from .columnar import EXTRACTED, ParquetOut, table
from .parallel import default_processes, ordered_map


@dataclass
class UnitResult:
    """What one unit gave: a table of good rows (possibly empty) and the rejects, in record order."""

    unit: Unit
    kind: str | None  # None: the unit could not be parsed, or is a label file of unknown schema
    rows: pa.Table | None = None
    by_category: Counter = field(default_factory=Counter)
    rejects: list[dict] = field(default_factory=list)  # InputError.as_reject(): errors do not pickle
    stats: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.rows.num_rows if self.rows is not None else 0


def _problem(reject: dict) -> InputError:
    return InputError(reject["file"], reject["reason"], reject["entry"], reject["record"], reject["raw"])


def _not_for_workers(item) -> bool:
    return isinstance(item, InputError) or item.kind in ("source", "ignored")


def read_unit(unit: Unit) -> UnitResult:
    """Parse one unit into an Arrow table of rows and its rejects (runs in a worker
    process, so one table crosses back instead of thousands of dicts)."""
    try:
        parsed = parse_json(unit)
    except InputError as problem:
        return UnitResult(unit, None, rejects=[problem.as_reject()])
    kind = unit.kind if unit.kind != "label" else sniff_label_kind(parsed)
    if kind is None:
        return UnitResult(unit, None)
    stats: dict = {}
    columns = other_columns(unit, parsed, stats) if kind == "other" else None
    if columns is not None:  # the usual case for the bulk of the download
        return UnitResult(
            unit, kind, pa.Table.from_pydict(columns, schema=EXTRACTED), Counter(columns["category"]), stats=stats
        )
    stats = {}
    items = other_rows(unit, parsed, stats) if kind == "other" else label_rows(unit, parsed, kind)
    rows, rejects = [], []
    for item in items:
        if isinstance(item, InputError):
            rejects.append(item.as_reject())
        else:
            rows.append(item)
    return UnitResult(unit, kind, table(rows, EXTRACTED), Counter(row["category"] for row in rows), rejects, stats)


class ExtractTally:
    """Counts and the report, built as units come in."""

    def __init__(self) -> None:
        self.shadowed: list[str] = []
        self.report: dict[str, list] = {
            "qa_units": [],
            "source_files": [],
            "ignored_files": [],
            "unrecognised_files": [],
            "shadowed_folders": self.shadowed,
        }
        self.by_kind: Counter = Counter()
        self.by_subset: Counter = Counter()
        self.by_category: Counter = Counter()
        self.stats: Counter = Counter()
        self.rejected = 0

    @property
    def rows(self) -> int:
        return sum(self.by_kind.values())

    def add(self, result: UnitResult) -> None:
        unit = result.unit
        self.stats.update(result.stats)
        self.by_kind[result.kind] += result.count
        self.by_subset[unit.subset] += result.count
        self.by_category.update(result.by_category)
        self.report["qa_units"].append(
            {"unit": unit.where, "kind": result.kind, "subset": unit.subset, "rows": result.count}
        )

    def metrics(self) -> dict:
        return {
            "rows": self.rows,
            "rows_by_kind": dict(sorted(self.by_kind.items())),
            "rows_by_subset": dict(sorted(self.by_subset.items())),
            "rows_by_category": dict(sorted(self.by_category.items())),
            "rejected": self.rejected,
            "qa_files": len(self.report["qa_units"]),
            "source_files_skipped": len(self.report["source_files"]),
            "ignored_files": len(self.report["ignored_files"]),
            "unrecognised_files": len(self.report["unrecognised_files"]),
            "shadowed_folders": len(self.shadowed),
            "contents_items_without_qa": self.stats.get("contents_items_without_qa", 0),
        }

    def nothing_found(self, aihub_dir: Path) -> InputError:
        report = self.report
        return InputError(
            str(aihub_dir),
            f"no QA rows found ({len(report['source_files'])} non-QA source files, "
            f"{len(report['ignored_files'])} ignored, {len(report['unrecognised_files'])} unrecognised, "
            f"{self.rejected} rejected); is data.aihub_dir the root of an AI Hub 71748 download?",
        )


def run_extract(aihub_dir: Path, on_error: str, paths: ExtractPaths, processes: int | None = None) -> dict:
    tally = ExtractTally()
    with ParquetOut(paths.rows, EXTRACTED) as rows_out, atomic_open(paths.rejects) as rejects_out:

        def reject(problem: InputError) -> None:
            if on_error == "fail":
                raise problem
            rejects_out.write(dumps_line(problem.as_reject()))
            tally.rejected += 1

        units = iter_units(Path(aihub_dir), tally.shadowed)
        results = ordered_map(read_unit, units, processes or default_processes(), passthrough=_not_for_workers)
        for result in tqdm(results, desc="extract", unit=" files"):
            if isinstance(result, InputError):  # an unreadable archive
                reject(result)
            elif isinstance(result, Unit):  # a non-QA source file, or junk
                tally.report["source_files" if result.kind == "source" else "ignored_files"].append(result.where)
            elif result.kind is None and not result.rejects:
                tally.report["unrecognised_files"].append(result.unit.where)
            else:
                for problem in result.rejects:
                    reject(_problem(problem))
                if result.kind is not None:
                    rows_out.write(result.rows)
                    tally.add(result)
        if tally.rows == 0:
            raise tally.nothing_found(Path(aihub_dir))

    metrics = tally.metrics()
    write_json(paths.report, tally.report)
    write_json(paths.summary, metrics)
    print(
        f"extract: {metrics['rows']} QA rows from {metrics['qa_files']} files, {tally.rejected} rejected, "
        f"{metrics['source_files_skipped']} non-QA source files skipped"
    )
    return metrics


def main(params: Params, args=None) -> None:
    run_extract(params.data.aihub_dir, params.extract.on_error, params.paths.extract)
