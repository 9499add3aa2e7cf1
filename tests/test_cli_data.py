"""The data stages through the CLI, pointed at a download the project did not write."""

import json

import pytest
import yaml
from conftest import REPO

from aihub_factory import standard_tree, zip_every_archive
from mna_tune.cli import main
from mna_tune.workspace import read_jsonl


def setup_workspace(root, on_error="fail"):
    standard_tree(root / "download")
    zip_every_archive(root / "download")
    mna = [
        {"question": "합병이란 무엇인가요?", "answer": "두 회사가 하나로 합쳐지는 것입니다.", "source": "중복"},
        {"question": "PMI란?", "answer": "인수 후 통합 과정입니다.", "source": "교재"},
    ]
    (root / "mna.json").write_text(json.dumps(mna, ensure_ascii=False), encoding="utf-8")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"] = {"aihub_dir": "download", "mna_path": "mna.json"}
    params["filter"]["min_score"] = 0
    params["filter"]["lexicon_path"] = str(REPO / "data/lexicon/domain_terms.tsv")
    params["extract"]["on_error"] = on_error
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")


def split_pairs(root):
    pairs = []
    for name in ("train", "val", "test"):
        for row in read_jsonl(root / f"data/processed/{name}.jsonl"):
            pairs.append((row["messages"][1]["content"], row["messages"][2]["content"]))
    return pairs


def test_splits_hold_exactly_the_qa_rows_minus_excluded_echo_and_duplicates(in_tmp):
    setup_workspace(in_tmp)
    for stage in ("extract", "filter", "merge", "split"):
        assert main([stage]) == 0
    assert sorted(split_pairs(in_tmp)) == sorted(
        [
            ("합병이란 무엇인가요?", "두 회사가 하나로 합쳐지는 것입니다."),  # once, though in both sources
            ("PMI란?", "인수 후 통합 과정입니다."),
            ("공개매수란?", "불특정 다수에게 장외에서 주식을 사겠다고 공고하는 것입니다."),
            ("주주총회 특별결의 요건은?", "출석 주주 의결권의 3분의 2 이상과 발행주식총수의 3분의 1 이상입니다."),
            ("실사란 무엇인가요?", "대상 회사를 조사하는 절차입니다."),  # the rank-1 answer, stored as answer02
            ("배당이란?", "이익을 주주에게 나누어 주는 것입니다."),
        ]
    )
    filtered = json.loads((in_tmp / "reports/filter.json").read_text())
    assert filtered["dropped"]["excluded_category"] == 2 and filtered["dropped"]["echo"] == 1
    assert json.loads((in_tmp / "reports/merge.json").read_text())["exact_duplicates_removed"] == 1


def _add_non_json_entry(root):
    import zipfile

    with zipfile.ZipFile(root / "download" / "Other" / "Other.zip", "a") as archive:
        archive.writestr("/OT-broken.json", b"\x00\x01 not json")


def test_non_json_entry_fail_names_it(in_tmp, capsys):
    setup_workspace(in_tmp)
    _add_non_json_entry(in_tmp)
    assert main(["extract"]) == 1
    error = capsys.readouterr().err
    assert "mna-tune extract: error: Other/Other.zip :: entry /OT-broken.json: not valid JSON" in error


def test_non_json_entry_skip_counts_it(in_tmp):
    setup_workspace(in_tmp, on_error="skip")
    _add_non_json_entry(in_tmp)
    assert main(["extract"]) == 0
    metrics = json.loads((in_tmp / "reports/extract.json").read_text())
    assert metrics["rejected"] == 1 and metrics["rows"] == 8
    rejects = list(read_jsonl(in_tmp / "data/interim/extract_rejects.jsonl"))
    assert rejects[0]["entry"] == "/OT-broken.json"


def test_bad_params_give_a_one_line_error(in_tmp, capsys):
    (in_tmp / "params.yaml").write_text("data: {aihub_dir: x, mna_path: y}\nsplit: {sede: 1}\n", encoding="utf-8")
    assert main(["split"]) == 1
    assert "split.sede: Extra inputs are not permitted" in capsys.readouterr().err


def test_missing_model_folder_is_a_clear_error(in_tmp, capsys):
    setup_workspace(in_tmp)
    params = yaml.safe_load((in_tmp / "params.yaml").read_text(encoding="utf-8"))
    params["model"]["base"] = "./models/qwen3-8b-local"
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for stage in ("extract", "filter", "merge", "split"):
        assert main([stage]) == 0
    assert main(["train"]) == 1
    assert "model.base './models/qwen3-8b-local': model folder not found" in capsys.readouterr().err


def _placements(root):
    return {
        row["id"]: (name, row["messages"][1]["content"])
        for name in ("train", "val", "test")
        for row in read_jsonl(root / f"data/processed/{name}.jsonl")
    }


def test_editing_one_raw_row_moves_only_that_row(in_tmp):
    """The embedded sample through extract..split twice, with one Other.zip answer edited
    in between: every other row keeps its split; near-duplicate and leakage handling
    depend on pairs of rows only, so they cannot shuffle the rest."""
    import shutil

    shutil.copytree(REPO / "data/sample/aihub", in_tmp / "aihub")
    shutil.copy(REPO / "data/sample/mna_qa.json", in_tmp / "mna.json")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"] = {"aihub_dir": "aihub", "mna_path": "mna.json"}
    params["filter"]["lexicon_path"] = str(REPO / "data/lexicon/domain_terms.tsv")
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for stage in ("extract", "filter", "merge", "split"):
        assert main([stage]) == 0
    before = _placements(in_tmp)
    leakage = json.loads((in_tmp / "reports/split.json").read_text())["leakage"]
    assert leakage["above_threshold"] == 0 and leakage["held_out_rows"] > 0

    edited_file = in_tmp / "aihub/Other/Other/OT-00-01.json"
    docs = json.loads(edited_file.read_text(encoding="utf-8"))
    qa = docs[0]["contents"][0]["QA"][1]
    old_id = next(row_id for row_id, (_, question) in before.items() if question == qa["question"])
    qa["answer"] += " 다만 정관에 다른 정함이 있으면 그에 따릅니다."
    edited_file.write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    for stage in ("extract", "filter", "merge", "split"):
        assert main([stage]) == 0
    after = _placements(in_tmp)

    assert set(before) - set(after) == {old_id}
    (new_id,) = set(after) - set(before)
    assert after[new_id][1] == qa["question"]
    assert all(after[row_id] == place for row_id, place in before.items() if row_id != old_id)


@pytest.mark.parametrize(
    "stage, missing, previous",
    [
        ("filter", "data/interim/extracted.parquet", "extract"),
        ("merge", "data/interim/filtered.parquet", "filter"),
        ("split", "data/interim/merged.jsonl", "merge"),
    ],
)
def test_a_stage_run_before_its_input_exists_says_which_stage_to_run(in_tmp, capsys, stage, missing, previous):
    setup_workspace(in_tmp)
    assert main([stage]) == 1
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == [error]  # one line, no traceback
    assert missing in error and f"run the {previous} stage first (dvc repro {previous})" in error


def test_mna_path_pointing_at_a_folder_is_one_line(in_tmp, capsys):
    setup_workspace(in_tmp)
    (in_tmp / "folder").mkdir()
    params = yaml.safe_load((in_tmp / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["mna_path"] = "folder"
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for stage in ("extract", "filter"):
        assert main([stage]) == 0
    capsys.readouterr()
    assert main(["merge"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == "mna-tune merge: error: folder: is a folder, expected the M&A QA JSON file (data.mna_path)"


def test_the_next_run_removes_what_a_killed_run_left_and_outputs_are_readable(in_tmp):
    """A killed stage leaves its temp files (a half-written Parquet): the next run of the stage
    removes those of dead processes and leaves a live writer's alone. Outputs get the mode a
    plain open() gives (0666 minus the umask), not mkstemp's 0600."""
    import os

    setup_workspace(in_tmp)
    interim = in_tmp / "data/interim"
    interim.mkdir(parents=True)
    dead = 4_194_399  # above Linux's largest pid: no such process
    stale = [
        interim / f".extracted.parquet.{dead}.k1ll3d00.tmp",
        interim / ".extracted.parquet.0ldst7le.tmp",
        interim / f".extract_report.json.{dead}.abcdefgh.tmp",
    ]
    live = interim / f".extracted.parquet.{os.getpid()}.st1llgo1.tmp"
    other = interim / f".extracted.parquet.bak.{dead}.abcdefgh.tmp"  # another file's temp: not ours to judge
    for path in [*stale, live, other]:
        path.write_bytes(b"PAR1 half written")
    old = os.umask(0o007)
    try:
        assert main(["extract"]) == 0
    finally:
        os.umask(old)
    assert not any(path.exists() for path in stale) and live.exists() and other.exists()
    for name in ("extracted.parquet", "extract_report.json", "extract_rejects.jsonl"):
        assert (interim / name).stat().st_mode & 0o777 == 0o660, name
    current = os.umask(0o022)
    os.umask(current)
    assert main(["filter"]) == 0
    assert (interim / "filtered.parquet").stat().st_mode & 0o777 == 0o666 & ~current


def test_a_failed_write_leaves_no_temp_file(in_tmp):
    from mna_tune.workspace import atomic_open

    with pytest.raises(RuntimeError), atomic_open(in_tmp / "out/x.json") as out:
        out.write("half")
        raise RuntimeError("killed")
    assert list((in_tmp / "out").iterdir()) == []
