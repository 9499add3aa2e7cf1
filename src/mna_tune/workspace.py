"""The workspace: where the repository is (also from inside `dvc exp run --temp/--queue`
copies), and how every stage reads and writes its files (atomic writes, JSON Lines, md5)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import orjson


def project_root() -> Path:
    """DVC_ROOT when DVC sets it (temporary experiment copies live under .dvc/tmp/exps),
    else the nearest folder holding .dvc, else the current folder."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return here


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[TextIO]:
    """Write to a temp file beside `path` and rename it into place only on success,
    so a failed stage never leaves a half-written output behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path | str, obj: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2, sort_keys=False)
        handle.write("\n")


def dumps_line(obj: Any) -> str:
    # orjson: the same compact UTF-8 JSON as json.dumps(ensure_ascii=False), several times faster
    return orjson.dumps(obj).decode("utf-8") + "\n"


def write_jsonl(path: Path | str, rows: Iterable[Any]) -> int:
    count = 0
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(dumps_line(row))
            count += 1
    return count


def read_jsonl(path: Path | str) -> Iterator[dict]:
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not a JSON line: {exc}") from None


def file_md5(path: Path | str) -> str:
    """Plain md5 of a file's bytes: the same value DVC 3 records in dvc.lock for a file."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
