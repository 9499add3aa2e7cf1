"""Content hashes as DVC computes them: what dvc.lock recorded, and what the workspace
holds now. Tag names are `lineage.<stage>.<path>`."""

from __future__ import annotations

from pathlib import Path

import yaml


def lineage_from_lock(lock_path: Path, stage_paths: dict[str, list[str]]) -> dict[str, str]:
    """md5 of named deps/outs as recorded in dvc.lock, e.g.
    {"extract": ["data/sample/aihub"]} -> {"lineage.extract.data/sample/aihub": "abc….dir"}."""
    try:
        lock = yaml.safe_load(Path(lock_path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return {}
    tags = {}
    for stage, wanted in stage_paths.items():
        entry = lock.get("stages", {}).get(stage, {})
        recorded = {item["path"]: item.get("md5", "") for item in entry.get("deps", []) + entry.get("outs", [])}
        for path in wanted:
            if path in recorded:
                tags[f"lineage.{stage}.{path}"] = recorded[path]
    return tags


def parse_lineage_tag(key: str) -> tuple[str, str] | None:
    """'lineage.split.data/processed/train.jsonl' -> ('split', 'data/processed/train.jsonl')."""
    parts = key.split(".", 2)
    if len(parts) != 3 or parts[0] != "lineage" or parts[1] == "verified":
        return None
    return parts[1], parts[2]


def workspace_md5(path: Path | str) -> str | None:
    """The md5 DVC would record for `path` now: a file's md5, or a folder's `….dir` hash
    (dvc-data's own algorithm). None when the path does not exist."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path)
    if not path.exists():
        return None
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not (item.is_file() or item.is_dir()):  # a pipe or a device would be hashed without end
            raise ValueError(f"{item}: not a regular file or folder (a pipe, a device or a link to one)")
    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(fs, scratch), str(path.resolve()), fs, "md5", dry_run=True)
    return obj.hash_info.value
