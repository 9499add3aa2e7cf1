"""Data stages at AI Hub scale: wall time and peak memory of extract, filter, merge and
split on a synthetic N-row download, against the original notebook's approach and the
floor, all on the same files in the same run. Prints a Markdown table.

    .venv/bin/python benchmarks/data_pipeline.py                 # N = 1,000,000 (writes ~310 MB once)
    .venv/bin/python benchmarks/data_pipeline.py --rows 100000
    .venv/bin/python benchmarks/data_pipeline.py --case templated   # low-vocabulary, templated questions
    .venv/bin/python benchmarks/data_pipeline.py --min-score 0      # every row through merge and split

- baseline: the notebook's approach: `json.load` of each entry into Python lists (QA of
  `contents[0]` for Other.zip, `data_info` for the label files), then a pandas DataFrame
  and its category filter;
- floor: only decompress every entry and parse it (stdlib json and orjson, one process);
- extract, filter, merge, split: `mna-tune <stage>` with the default params, in a scratch
  workspace pointed at the download. The table also says what reached each stage and, for
  merge and split, whether the near-duplicate search was exact or bounded (and how many
  candidate pairs it skipped).
Each runs in its own process; peak RSS is the process's own maximum, plus the largest
worker's where the stage uses worker processes (they run at the same time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
EXCLUDED = ["예체능", "종교", "보건"]
OUTPUTS = {
    "extract": ["data/interim/extract*"],
    "filter": ["data/interim/filter*"],
    "merge": ["data/interim/merge*"],
    "split": ["data/processed/*", "reports/split_leakage.jsonl"],
}


def _zip_entries(root: Path):
    import zipfile

    for path in sorted(root.rglob("*.zip")):
        if "01.원천데이터" in path.parts:
            continue
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                yield path, info.filename, archive.read(info)


def floor(root: Path, parser: str) -> dict:
    loads = json.loads
    if parser == "orjson":
        import orjson

        loads = orjson.loads
    entries = 0
    for _, _, data in _zip_entries(root):
        loads(data)
        entries += 1
    return {"entries": entries}


def baseline(root: Path) -> dict:
    import pandas as pd

    questions, answers, categories = [], [], []
    for _, _name, data in _zip_entries(root):
        parsed = json.loads(data)
        if isinstance(parsed, list):  # Other.zip: the notebook read contents[0]
            for doc in parsed:
                for qa in doc["contents"][0]["QA"]:
                    questions.append(qa["question"])
                    answers.append(qa["answer"])
                    categories.append(doc["data_category"]["middle"])
        else:
            for record in parsed["data_info"]:
                answer = (
                    record["answer"]["contents"]
                    if "answer" in record
                    else next(
                        value["contents"]
                        for key, value in record.items()
                        if key.startswith("answer") and value["ranking"] == 1
                    )
                )
                questions.append(record["question"])
                answers.append(answer)
                categories.append(record["data_category"]["middle"])
    frame = pd.DataFrame({"question": questions, "answer": answers, "category": categories})
    kept = frame[~frame["category"].isin(EXCLUDED)]
    return {"rows": len(frame), "kept": len(kept)}


def stage(workspace: Path, name: str) -> dict:
    os.chdir(workspace)
    from mna_tune.cli import main
    from mna_tune.params import load_params

    code = main([name])
    if code:
        raise SystemExit(code)
    metrics_path = getattr(load_params(workspace / "params.yaml").paths, name).metrics
    metrics = json.loads((workspace / metrics_path).read_text(encoding="utf-8"))
    written = sum(path.stat().st_size for pattern in OUTPUTS[name] for path in workspace.glob(pattern))
    rows = metrics.get("rows_kept") or metrics.get("rows_out") or metrics.get("rows")
    rows_in = metrics.get("rows_in")
    search = metrics.get("near_duplicate_search") or metrics.get("leakage", {}).get("pair_search") or {}
    note = (
        ""
        if not search
        else (
            "exact search"
            if search.get("exact")
            else f"bounded search: {search['candidate_pairs']:,} pairs compared, "
            f"{search['candidate_pairs_skipped']:,} skipped"
        )
    )
    if name == "split":
        note += f"; nearest train: {metrics['leakage'].get('nearest_train_search')}"
    return {
        "rows": sum(rows.values()) if isinstance(rows, dict) else rows,
        "output_mib": written / 2**20,
        "rows_in": sum(rows_in.values()) if isinstance(rows_in, dict) else rows_in,
        "note": note,
    }


def run_step(step: str, root: Path, workspace: Path) -> dict:
    import resource

    started = time.perf_counter()
    if step == "baseline":
        info = baseline(root)
    elif step.startswith("floor"):
        info = floor(root, step.split("-")[1])
    else:
        info = stage(workspace, step)
    seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {**info, "seconds": seconds, "rss_mib": own + workers, "own_mib": own, "worker_mib": workers}


def prepare_workspace(root: Path, workspace: Path, min_score: float | None = None) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    if min_score is not None:
        params["filter"]["min_score"] = min_score
    params["data"] = {"aihub_dir": str(root), "mna_path": str(REPO / "data/sample/mna_qa.json")}
    params["filter"]["lexicon_path"] = str(REPO / "data/lexicon/domain_terms.tsv")
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, help="download folder (default: a cached synthetic one in /tmp)")
    parser.add_argument(
        "--case",
        choices=("diverse", "templated"),
        default="diverse",
        help="the synthetic download's text (benchmarks/make_aihub.py)",
    )
    parser.add_argument("--min-score", type=float, help="filter.min_score (default: params.yaml's)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    suffix = "" if args.case == "diverse" else f"-{args.case}"
    root = args.data or Path(tempfile.gettempdir()) / f"aihub-synthetic-{args.rows}{suffix}"
    if args.step:
        print(json.dumps(run_step(args.step, root, args.workspace)))
        return
    if not (root / "Other/Other.zip").is_file():
        sys.path.insert(0, str(Path(__file__).parent))
        from make_aihub import make_download

        print(f"writing a {args.rows:,}-row {args.case} download to {root} ...", file=sys.stderr)
        make_download(args.rows, root, case=args.case)
    with tempfile.TemporaryDirectory() as scratch:
        workspace = Path(scratch)
        prepare_workspace(root, workspace, args.min_score)
        results = {}
        for step in ("floor-json", "floor-orjson", "baseline", "extract", "filter", "merge", "split"):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--step",
                    step,
                    "--workspace",
                    str(workspace),
                    "--data",
                    str(root),
                    "--rows",
                    str(args.rows),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            if done.returncode != 0:
                raise SystemExit(f"{step} failed:\n{done.stderr[-3000:]}")
            results[step] = json.loads(done.stdout.strip().splitlines()[-1])
    size = sum(path.stat().st_size for path in root.rglob("*.zip")) / 2**20
    score = "" if args.min_score is None else f", filter.min_score {args.min_score:g}"
    print(
        f"{args.rows:,} QA rows, {args.case} case{score} ({size:.0f} MiB of zips), {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}\n"
    )
    print("| step | rows in | rows out | wall s | peak RSS MiB | output MiB | vs baseline | vs floor (orjson) | note |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    base, fl = results["baseline"]["seconds"], results["floor-orjson"]["seconds"]
    for step, r in results.items():
        rows = r.get("kept", r.get("rows", ""))
        rows = f"{rows:,}" if isinstance(rows, int) else ""
        rows_in = f"{r['rows_in']:,}" if isinstance(r.get("rows_in"), int) else ""
        output = f"{r['output_mib']:.0f}" if "output_mib" in r else ""
        print(
            f"| {step} | {rows_in} | {rows} | {r['seconds']:.1f} | {r['rss_mib']:.0f} | {output} | "
            f"{base / r['seconds']:.2f}x faster | "
            f"{r['seconds'] / fl:.2f}x the floor | {r.get('note', '')} |"
        )


if __name__ == "__main__":
    main()
