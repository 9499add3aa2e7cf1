import json
import zipfile

import pytest
from conftest import REPO

from aihub_factory import (
    OTHER_DIR,
    SFT_DIR,
    SOURCE_DIR,
    other_doc,
    rm_record,
    standard_tree,
    write_json,
    zip_every_archive,
    zip_folder,
)
from mna_tune.data.columnar import read_rows
from mna_tune.data.extract import run_extract
from mna_tune.errors import InputError
from mna_tune.params import ExtractPaths
from mna_tune.workspace import read_jsonl


def paths(tmp_path):
    return ExtractPaths(
        rows=tmp_path / "out/rows.parquet",
        rejects=tmp_path / "out/rejects.jsonl",
        report=tmp_path / "out/report.json",
        summary=tmp_path / "out/metrics.json",
    )


def extract(tmp_path, root, on_error="fail"):
    p = paths(tmp_path)
    metrics = run_extract(root, on_error, p)
    rows = list(read_rows(p.rows))
    rejects = list(read_jsonl(p.rejects))
    report = json.loads(p.report.read_text(encoding="utf-8"))
    return metrics, rows, rejects, report


def pairs(rows):
    return {(row["question"], row["answer"]) for row in rows}


@pytest.mark.parametrize("zipped", [False, True], ids=["unzipped", "zipped"])
def test_reads_every_kind_of_unit(tmp_path, zipped):
    expected = standard_tree(tmp_path / "dl")
    if zipped:
        assert len(zip_every_archive(tmp_path / "dl")) == 4
    metrics, rows, rejects, report = extract(tmp_path, tmp_path / "dl")
    assert pairs(rows) == expected
    assert metrics["rows"] == 8 and metrics["rejected"] == 0 and not rejects
    assert metrics["rows_by_kind"] == {"other": 3, "rm": 2, "sft": 3}
    assert metrics["rows_by_subset"] == {"Other": 3, "Training": 3, "Validation": 2}
    assert metrics["source_files_skipped"] == 1 and len(report["source_files"]) == 1
    assert "01.원천데이터" in report["source_files"][0]


def test_zipped_and_unzipped_sample_give_the_same_rows(tmp_path):
    import shutil

    shutil.copytree(REPO / "data/sample/aihub", tmp_path / "dl")
    _, unzipped, _, _ = extract(tmp_path, tmp_path / "dl")
    zip_every_archive(tmp_path / "dl")
    _, zipped, _, _ = extract(tmp_path, tmp_path / "dl")
    assert len(unzipped) >= 300
    assert [(r["question"], r["answer"], r["category"]) for r in zipped] == [
        (r["question"], r["answer"], r["category"]) for r in unzipped
    ]
    assert all(r["entry"].startswith("/") for r in zipped)


def test_rank_one_answer_is_taken_wherever_it_sits(tmp_path):
    standard_tree(tmp_path / "dl")
    _, rows, _, _ = extract(tmp_path, tmp_path / "dl")
    rm = {row["question"]: row for row in rows if row["kind"] == "rm"}
    assert rm["실사란 무엇인가요?"]["answer"] == "대상 회사를 조사하는 절차입니다."  # answer02 has ranking 1


def test_rows_keep_origin_and_category(tmp_path):
    standard_tree(tmp_path / "dl")
    zip_every_archive(tmp_path / "dl")
    _, rows, _, _ = extract(tmp_path, tmp_path / "dl")
    row = next(r for r in rows if r["question"] == "공개매수란?")
    assert row["file"] == "Other/Other.zip" and row["entry"] == "/OT-1.json"
    assert row["record"] == "[0].contents[1].QA[0]"  # the second contents item is read too
    assert (row["subset"], row["kind"], row["category"], row["category_main"]) == ("Other", "other", "사회", "문어체")


def test_unzipped_copy_beside_its_zip_is_not_read_twice(tmp_path):
    standard_tree(tmp_path / "dl")
    zip_folder(tmp_path / "dl" / OTHER_DIR, remove=False)
    metrics, rows, _, report = extract(tmp_path, tmp_path / "dl")
    assert metrics["rows"] == 8
    assert report["shadowed_folders"] == ["Other/Other"]


def test_junk_files_are_listed_not_read(tmp_path):
    standard_tree(tmp_path / "dl")
    (tmp_path / "dl" / OTHER_DIR / ".DS_Store").write_bytes(b"\x00\x01")
    metrics, _, _, report = extract(tmp_path, tmp_path / "dl")
    assert metrics["ignored_files"] == 1 and report["ignored_files"] == ["Other/Other/.DS_Store"]


# ---- bad input: `fail` names file, entry and record; `skip` quarantines and counts ----


def _non_json_entry(root):
    standard_tree(root)
    (root / OTHER_DIR / "broken.json").write_text("{this is not json", encoding="utf-8")
    zip_every_archive(root)


def test_non_json_entry_fail_names_archive_and_entry(tmp_path):
    _non_json_entry(tmp_path / "dl")
    with pytest.raises(InputError) as err:
        extract(tmp_path, tmp_path / "dl")
    assert "Other/Other.zip" in str(err.value) and "/broken.json" in str(err.value)
    assert "not valid JSON" in str(err.value)
    assert not paths(tmp_path).rows.exists()  # no half-written output


def test_non_json_entry_skip_counts_and_quarantines(tmp_path):
    _non_json_entry(tmp_path / "dl")
    metrics, rows, rejects, _ = extract(tmp_path, tmp_path / "dl", on_error="skip")
    assert metrics["rejected"] == 1 and len(rows) == 8
    assert rejects[0]["file"] == "Other/Other.zip" and rejects[0]["entry"] == "/broken.json"
    assert "not valid JSON" in rejects[0]["reason"]


def test_corrupt_and_truncated_zip(tmp_path):
    standard_tree(tmp_path / "dl")
    archive = zip_folder(tmp_path / "dl" / OTHER_DIR)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])  # truncated: central directory gone
    with pytest.raises(InputError, match=r"Other/Other\.zip: not a readable zip archive"):
        extract(tmp_path, tmp_path / "dl")
    metrics, rows, rejects, _ = extract(tmp_path, tmp_path / "dl", on_error="skip")
    assert metrics["rejected"] == 1 and len(rows) == 5 and rejects[0]["entry"] is None


def test_damaged_entry_inside_a_readable_zip(tmp_path):
    standard_tree(tmp_path / "dl")
    archive = zip_folder(tmp_path / "dl" / OTHER_DIR)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + 5
    data[start : start + 20] = bytes(20)  # corrupt the compressed bytes, keep the directory
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"Other/Other\.zip :: entry /OT-1\.json: cannot decompress"):
        extract(tmp_path, tmp_path / "dl")


def test_empty_archive(tmp_path):
    standard_tree(tmp_path / "dl")
    with zipfile.ZipFile(tmp_path / "dl" / "Other" / "Extra.zip", "w"):
        pass
    with pytest.raises(InputError, match=r"Other/Extra\.zip: the archive holds no files"):
        extract(tmp_path, tmp_path / "dl")
    assert extract(tmp_path, tmp_path / "dl", on_error="skip")[0]["rejected"] == 1


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"not": "a list"}, "expected a JSON array of documents, got object"),
        ([{"data_category": {"middle": "사회"}}], "missing key 'contents'"),
        ([{"data_category": {"middle": "사회"}, "contents": [{"QA": "질문"}]}], "'QA' is string, expected array"),
        (
            [{"data_category": {"middle": "사회"}, "contents": [{"QA": [{"question": 3, "answer": "답"}]}]}],
            "'question' is int, expected string",
        ),
        ([{"contents": []}], "missing key 'data_category.middle'"),
    ],
)
def test_wrong_shapes_in_other_entries(tmp_path, payload, reason):
    standard_tree(tmp_path / "dl")
    write_json(tmp_path / "dl" / OTHER_DIR / "bad.json", payload)
    with pytest.raises(InputError) as err:
        extract(tmp_path, tmp_path / "dl")
    assert reason in str(err.value) and "Other/Other/bad.json" in str(err.value)
    metrics, rows, rejects, _ = extract(tmp_path, tmp_path / "dl", on_error="skip")
    assert metrics["rejected"] == 1 and rejects[0]["reason"] == reason and len(rows) == 8


def test_bad_record_names_its_index_and_keeps_the_rest_of_the_entry(tmp_path):
    standard_tree(tmp_path / "dl")
    good = ("좋은 질문입니다?", "좋은 답입니다.")
    write_json(
        tmp_path / "dl" / OTHER_DIR / "mixed.json",
        [
            other_doc("사회", [good, ("질문만 있습니다", None)]),
        ],
    )
    doc = json.loads((tmp_path / "dl" / OTHER_DIR / "mixed.json").read_text(encoding="utf-8"))
    del doc[0]["contents"][0]["QA"][1]["answer"]
    write_json(tmp_path / "dl" / OTHER_DIR / "mixed.json", doc)
    with pytest.raises(InputError, match=r"record \[0\]\.contents\[0\]\.QA\[1\]: missing key 'answer'"):
        extract(tmp_path, tmp_path / "dl")
    _, rows, rejects, _ = extract(tmp_path, tmp_path / "dl", on_error="skip")
    assert good in pairs(rows)
    assert rejects[0]["raw"] == {"question": "질문만 있습니다"}


@pytest.mark.parametrize(
    "rankings, reason",
    [
        ([2, 3], "no answer has ranking 1"),
        ([1, 1], "2 answers have ranking 1 (answer01, answer02)"),
    ],
)
def test_ranking_record_needs_exactly_one_rank_one_answer(tmp_path, rankings, reason):
    standard_tree(tmp_path / "dl")
    record = rm_record("사회", "합병 절차는?", [("답 하나", rankings[0]), ("답 둘", rankings[1])])
    write_json(tmp_path / "dl" / SFT_DIR / "RMlabel.json", {"data_info": [record]})
    with pytest.raises(InputError) as err:
        extract(tmp_path, tmp_path / "dl")
    assert "RMlabel.json" in str(err.value) and "record data_info[0]" in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("written", [1, "1", 1.0, " 1 "])
def test_a_rank_is_a_whole_number_however_it_is_written(tmp_path, written):
    """A hostile round found "1" taken as rank 1 but 1.0 refused: one rule for both."""
    standard_tree(tmp_path / "dl")
    record = rm_record("사회", "합병 절차는?", [("답 하나", 2), ("답 둘", written)])
    write_json(tmp_path / "dl" / SFT_DIR / "RMlabel.json", {"data_info": [record]})
    _, rows, _, _ = extract(tmp_path, tmp_path / "dl")
    assert [r["answer"] for r in rows if r["question"] == "합병 절차는?"] == ["답 둘"]


def test_a_fractional_rank_is_refused(tmp_path):
    standard_tree(tmp_path / "dl")
    record = rm_record("사회", "합병 절차는?", [("답 하나", 2), ("답 둘", 1.5)])
    write_json(tmp_path / "dl" / SFT_DIR / "RMlabel.json", {"data_info": [record]})
    with pytest.raises(InputError, match="'answer02.ranking' is .*expected integer"):
        extract(tmp_path, tmp_path / "dl")


def test_utf8_bom_is_accepted_and_non_utf8_bytes_are_named(tmp_path):
    standard_tree(tmp_path / "dl")
    path = tmp_path / "dl" / OTHER_DIR / "OT-1.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert extract(tmp_path, tmp_path / "dl")[0]["rows"] == 8
    path.write_bytes(json.dumps([other_doc("사회", [("합병?", "네")])], ensure_ascii=False).encode("cp949"))
    with pytest.raises(InputError, match=r"Other/Other/OT-1\.json: not UTF-8 text \(invalid byte at offset \d+\)"):
        extract(tmp_path, tmp_path / "dl")


def test_label_file_of_unknown_schema_is_listed_as_unrecognised(tmp_path):
    standard_tree(tmp_path / "dl")
    write_json(tmp_path / "dl" / "Training/02.라벨링데이터/TL_09.기타/unknown.json", {"rows": [1, 2]})
    metrics, rows, _, report = extract(tmp_path, tmp_path / "dl")
    assert metrics["unrecognised_files"] == 1 and len(rows) == 8
    assert report["unrecognised_files"] == ["Training/02.라벨링데이터/TL_09.기타/unknown.json"]


def test_a_download_without_qa_rows_is_an_error(tmp_path):
    write_json(tmp_path / "dl" / SOURCE_DIR / "WL01.json", {"data_info": []})
    with pytest.raises(InputError, match="no QA rows found"):
        extract(tmp_path, tmp_path / "dl")
    with pytest.raises(InputError, match="does not exist"):
        extract(tmp_path, tmp_path / "missing")


def test_cp949_entry_names_from_windows_zip_tools_are_decoded(tmp_path):
    root = tmp_path / "dl"
    standard_tree(root)
    archive = zip_folder(root / OTHER_DIR)
    payload = json.dumps([other_doc("사회", [("인수란?", "회사를 사들이는 것입니다.")])], ensure_ascii=False)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("/XXXX.json", payload)  # ASCII placeholder of the same byte length, no UTF-8 flag
    # Korean Windows tools store names as cp949 bytes without the UTF-8 flag.
    archive.write_bytes(archive.read_bytes().replace(b"/XXXX.json", "/기타.json".encode("cp949")))
    _, rows, _, _ = extract(tmp_path, root)
    assert any(row["entry"] == "/기타.json" for row in rows)


def test_the_columnar_fast_path_gives_exactly_the_rows_of_the_checked_path():
    from pathlib import PurePosixPath

    from aihub_factory import other_doc
    from mna_tune.data.aihub_layout import Unit
    from mna_tune.data.aihub_records import other_columns, other_rows
    from mna_tune.data.columnar import EXTRACTED

    unit = Unit("Other/Other.zip", "/OT-1.json", PurePosixPath("Other/Other/OT-1.json"), "other", "Other", "unused")
    docs = [
        other_doc("사회", [("합병이란?", "합치는 것"), ("분할이란?", "나누는 것")], [("실사란?", "조사")]),
        {**other_doc("인문", [("질문", "답")]), "data_id": "doc-7"},
    ]
    docs[0]["contents"].append({"text": "QA 없는 본문"})
    fast_stats, slow_stats = {}, {}
    columns = other_columns(unit, docs, fast_stats)
    rows = list(other_rows(unit, docs, slow_stats))
    assert columns == {name: [row[name] for row in rows] for name in EXTRACTED.names}
    assert fast_stats == slow_stats == {"contents_items_without_qa": 1}
    for broken in (
        {"contents": []},
        [{"data_category": {"middle": 3}, "contents": []}],
        [other_doc("사회", [("질문", None)])],
        [{**other_doc("사회"), "contents": {"QA": []}}],
    ):
        assert other_columns(unit, broken if isinstance(broken, list) else broken, {}) is None


def test_same_named_entries_of_an_appended_archive_are_all_read(tmp_path):
    """Appending to a zip can leave two entries of one name (legal): both are read, by their own
    directory record, and the report tells them apart."""
    import warnings

    standard_tree(tmp_path / "dl")
    zip_every_archive(tmp_path / "dl")
    archive = tmp_path / "dl" / OTHER_DIR.rsplit("/", 1)[0] / "Other.zip"
    later = [
        other_doc("사회", [("영업양도란?", "영업을 통째로 넘기는 것입니다.")]),
        other_doc("사회", [("실사란?", "회사를 조사하는 것입니다."), ("PMI란?", "인수 후 통합입니다.")]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns "Duplicate name"
        with zipfile.ZipFile(archive, "a") as out:
            out.writestr("/OT-1.json", json.dumps(later, ensure_ascii=False))
    metrics, rows, _, report = extract(tmp_path, tmp_path / "dl")
    other = [(r["entry"], r["question"]) for r in rows if r["kind"] == "other"]
    assert other == [
        ("/OT-1.json [1 of 2]", "합병이란 무엇인가요?"),
        ("/OT-1.json [1 of 2]", "공개매수란?"),
        ("/OT-1.json [1 of 2]", "축구 경기는 몇 명이 하나요?"),
        ("/OT-1.json [2 of 2]", "영업양도란?"),
        ("/OT-1.json [2 of 2]", "실사란?"),
        ("/OT-1.json [2 of 2]", "PMI란?"),
    ]
    assert metrics["rows"] == 11 and metrics["rows_by_kind"]["other"] == 6
    units = {u["unit"]: u["rows"] for u in report["qa_units"] if u["kind"] == "other"}
    assert units == {"Other/Other.zip :: /OT-1.json [1 of 2]": 3, "Other/Other.zip :: /OT-1.json [2 of 2]": 3}
