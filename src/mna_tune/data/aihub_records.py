"""Turns one parsed AI Hub JSON unit into QA rows (schemas in shared/aihub-format.md).

Readers yield row dicts, or an InputError for a record they cannot read, so the caller
decides between `fail` and `skip` and nothing is dropped without a trace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from ..errors import InputError
from .aihub_layout import Unit

_ANSWER_KEY = re.compile(r"^answer\d+$")
_BOM = b"\xef\xbb\xbf"


def parse_json(unit: Unit) -> Any:
    data = unit.read()
    if data.startswith(_BOM):  # Windows editors write one; it is not part of the JSON
        data = data[len(_BOM) :]
    try:
        return orjson.loads(data)  # parses the bytes directly: no separate decode pass
    except orjson.JSONDecodeError:
        pass
    try:  # say what is wrong: the encoding, or the JSON
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(unit.file, f"not UTF-8 text (invalid byte at offset {exc.start})", entry=unit.entry) from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InputError(
            unit.file, f"not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})", entry=unit.entry
        ) from None


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def _text(record: Any, path: str, unit: Unit, where: str) -> str:
    """The string at dotted `path` in `record`, or an InputError naming the key."""
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise InputError(unit.file, f"missing key '{path}'", entry=unit.entry, record=where, raw=record)
        value = value[key]
    if not isinstance(value, str):
        raise InputError(
            unit.file, f"'{path}' is {_type_name(value)}, expected string", entry=unit.entry, record=where, raw=record
        )
    return value


def _row(unit: Unit, kind: str, record: str, question: str, answer: str, category: dict, data_id: Any) -> dict:
    return {
        "question": question,
        "answer": answer,
        "category": category["middle"],
        "category_main": category.get("main") if isinstance(category.get("main"), str) else "",
        "subset": unit.subset,
        "kind": kind,
        "file": unit.file,
        "entry": unit.entry,
        "record": record,
        "data_id": data_id if isinstance(data_id, str) else None,
    }


def _category(record: Any, unit: Unit, where: str) -> dict:
    _text(record, "data_category.middle", unit, where)
    return record["data_category"]


def other_rows(unit: Unit, docs: Any, stats: dict) -> Iterator[dict | InputError]:
    """Other.zip entries: an array of documents, QA in every `contents` item."""
    if not isinstance(docs, list):
        yield InputError(unit.file, f"expected a JSON array of documents, got {_type_name(docs)}", entry=unit.entry)
        return
    for i, doc in enumerate(docs):
        where = f"[{i}]"
        try:
            if not isinstance(doc, dict):
                raise InputError(unit.file, f"document is {_type_name(doc)}, expected object", unit.entry, where, doc)
            category = _category(doc, unit, where)
            contents = doc.get("contents")
            if not isinstance(contents, list):
                reason = (
                    "missing key 'contents'"
                    if "contents" not in doc
                    else f"'contents' is {_type_name(contents)}, expected array"
                )
                raise InputError(unit.file, reason, unit.entry, where, doc)
        except InputError as problem:
            yield problem
            continue
        for j, item in enumerate(contents):
            qa_list = item.get("QA") if isinstance(item, dict) else None
            if qa_list is None:
                # The notebook read contents[0] only; items without QA exist and are counted.
                stats["contents_items_without_qa"] = stats.get("contents_items_without_qa", 0) + 1
                continue
            if not isinstance(qa_list, list):
                yield InputError(
                    unit.file,
                    f"'QA' is {_type_name(qa_list)}, expected array",
                    unit.entry,
                    f"{where}.contents[{j}]",
                    item,
                )
                continue
            for k, qa in enumerate(qa_list):
                qa_where = f"{where}.contents[{j}].QA[{k}]"
                try:
                    question = _text(qa, "question", unit, qa_where)
                    answer = _text(qa, "answer", unit, qa_where)
                except InputError as problem:
                    yield problem
                    continue
                yield _row(unit, "other", qa_where, question, answer, category, doc.get("data_id"))


def other_columns(unit: Unit, docs: Any, stats: dict) -> dict[str, list] | None:
    """Fast path for a well-formed Other.zip entry: the same rows as other_rows, built
    straight into columns (no dict per row). Returns None at the first thing out of
    shape; the caller then reads the entry with other_rows, which names the problem."""
    if not isinstance(docs, list):
        return None
    question, answer, category, category_main, record, data_id = [], [], [], [], [], []
    without_qa = 0
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            return None
        header = doc.get("data_category")
        contents = doc.get("contents")
        if not isinstance(header, dict) or type(header.get("middle")) is not str or not isinstance(contents, list):
            return None
        middle = header["middle"]
        main = header.get("main") if type(header.get("main")) is str else ""
        doc_id = doc.get("data_id") if type(doc.get("data_id")) is str else None
        for j, item in enumerate(contents):
            qa_list = item.get("QA") if isinstance(item, dict) else None
            if qa_list is None:
                without_qa += 1
                continue
            if not isinstance(qa_list, list):
                return None
            for k, qa in enumerate(qa_list):
                if type(qa) is not dict:
                    return None
                q, a = qa.get("question"), qa.get("answer")
                if type(q) is not str or type(a) is not str:
                    return None
                question.append(q)
                answer.append(a)
                category.append(middle)
                category_main.append(main)
                record.append(f"[{i}].contents[{j}].QA[{k}]")
                data_id.append(doc_id)
    if without_qa:
        stats["contents_items_without_qa"] = stats.get("contents_items_without_qa", 0) + without_qa
    count = len(question)
    return {
        "question": question,
        "answer": answer,
        "category": category,
        "category_main": category_main,
        "subset": [unit.subset] * count,
        "kind": ["other"] * count,
        "file": [unit.file] * count,
        "entry": [unit.entry] * count,
        "record": record,
        "data_id": data_id,
    }


def _label_records(unit: Unit, obj: Any) -> list | InputError:
    if not isinstance(obj, dict) or not isinstance(obj.get("data_info"), list):
        found = _type_name(obj) if not isinstance(obj, dict) else "an object without a 'data_info' array"
        return InputError(unit.file, f"expected an object with a 'data_info' array, got {found}", entry=unit.entry)
    return obj["data_info"]


def _rank_one_answer(record: dict, unit: Unit, where: str) -> str:
    answers = {key: value for key, value in record.items() if _ANSWER_KEY.match(key)}
    if not answers:
        raise InputError(unit.file, "no answerNN keys in a ranking record", unit.entry, where, record)
    best = []
    for key, value in sorted(answers.items()):
        if not isinstance(value, dict) or "ranking" not in value:
            raise InputError(unit.file, f"'{key}' has no 'ranking'", unit.entry, where, record)
        ranking = value["ranking"]
        # A rank is a whole number however the file writes it: 1, "1" and 1.0 are rank 1; 1.5 is refused.
        whole_text = isinstance(ranking, str) and ranking.strip().isdigit()
        if whole_text or (isinstance(ranking, float) and ranking.is_integer()):
            ranking = int(ranking)
        if not isinstance(ranking, int) or isinstance(ranking, bool):
            raise InputError(
                unit.file, f"'{key}.ranking' is {_type_name(ranking)}, expected integer", unit.entry, where, record
            )
        if ranking == 1:
            best.append(key)
    if len(best) != 1:
        reason = "no answer has ranking 1" if not best else f"{len(best)} answers have ranking 1 ({', '.join(best)})"
        raise InputError(unit.file, reason, unit.entry, where, record)
    return _text(record, f"{best[0]}.contents", unit, where)


def label_rows(unit: Unit, obj: Any, kind: str) -> Iterator[dict | InputError]:
    """SFTlabel (answer.contents) and RMlabel (the answer ranked 1, wherever it sits)."""
    records = _label_records(unit, obj)
    if isinstance(records, InputError):
        yield records
        return
    for i, record in enumerate(records):
        where = f"data_info[{i}]"
        try:
            if not isinstance(record, dict):
                raise InputError(
                    unit.file, f"record is {_type_name(record)}, expected object", unit.entry, where, record
                )
            category = _category(record, unit, where)
            question = _text(record, "question", unit, where)
            answer = (
                _rank_one_answer(record, unit, where) if kind == "rm" else _text(record, "answer.contents", unit, where)
            )
        except InputError as problem:
            yield problem
            continue
        yield _row(unit, kind, where, question, answer, category, record.get("data_id"))


def sniff_label_kind(obj: Any) -> str | None:
    """For label files of unknown name: 'sft' or 'rm' when the first record fits, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data_info"), list) or not obj["data_info"]:
        return None
    first = obj["data_info"][0]
    if not isinstance(first, dict) or "question" not in first:
        return None
    if any(_ANSWER_KEY.match(key) for key in first):
        return "rm"
    if isinstance(first.get("answer"), dict) and "contents" in first["answer"]:
        return "sft"
    return None
