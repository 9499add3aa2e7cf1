"""Reader for the M&A QA file: a JSON array of {"question", "answer", "source"} records."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from .text import clean_text, invisible_count

MAX_MNA_BYTES = 2 * 1024**3  # read whole into memory: far above any QA set, far below this machine's memory


def read_mna(path: Path) -> list[dict]:
    """Validated records with cleaned text (and how many invisible characters the cleaning
    removed); any problem names the row and the key."""
    name = str(path)
    if Path(path).is_dir():
        raise InputError(name, "is a folder, expected the M&A QA JSON file (data.mna_path)")
    if Path(path).exists() and not Path(path).is_file():  # a device (/dev/zero), a pipe: reads without end
        raise InputError(name, "is not a regular file (data.mna_path must name the M&A QA JSON file)")
    if Path(path).is_file() and Path(path).stat().st_size > MAX_MNA_BYTES:
        raise InputError(
            name,
            f"is {Path(path).stat().st_size} bytes, over the {MAX_MNA_BYTES} an M&A QA file may "
            "have (a JSON array of question-answer records)",
        )
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(name, "M&A QA file not found (data.mna_path)") from None
    except OSError as exc:
        raise InputError(name, f"cannot read the M&A QA file (data.mna_path): {exc.strerror}") from None
    try:
        records = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(name, f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(name, f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(records, list):
        raise InputError(name, f"expected a JSON array of QA records, got {type(records).__name__}")
    if not records:
        raise InputError(name, "the M&A QA file holds no records")
    rows = []
    for index, record in enumerate(records):
        where = f"[{index}]"
        if not isinstance(record, dict):
            raise InputError(name, f"record is {type(record).__name__}, expected object", record=where)
        for key in ("question", "answer"):
            if key not in record:
                raise InputError(name, f"missing key '{key}'", record=where)
            if not isinstance(record[key], str):
                raise InputError(name, f"'{key}' is {type(record[key]).__name__}, expected string", record=where)
            if not clean_text(record[key]):
                raise InputError(name, f"'{key}' is empty", record=where)
        source = record.get("source", "")
        if not isinstance(source, str):
            raise InputError(name, f"'source' is {type(source).__name__}, expected string", record=where)
        rows.append(
            {
                "question": clean_text(record["question"]),
                "answer": clean_text(record["answer"]),
                "source_text": source,
                "record": where,
                "invisible": invisible_count(record["question"]) + invisible_count(record["answer"]),
            }
        )
    return rows
