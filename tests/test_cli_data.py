"""The data stages through the CLI, pointed at a download the project did not write."""

import json

import yaml

from aihub_factory import standard_tree, zip_every_archive
from mna_tune.cli import main
from mna_tune.workspace import read_jsonl

from conftest import REPO


def setup_workspace(root, on_error="fail"):
    standard_tree(root / "download")
    zip_every_archive(root / "download")
    mna = [{"question": "합병이란 무엇인가요?", "answer": "두 회사가 하나로 합쳐지는 것입니다.", "source": "중복"},
           {"question": "PMI란?", "answer": "인수 후 통합 과정입니다.", "source": "교재"}]
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
    assert sorted(split_pairs(in_tmp)) == sorted([
        ("합병이란 무엇인가요?", "두 회사가 하나로 합쳐지는 것입니다."),  # once, though in both sources
        ("PMI란?", "인수 후 통합 과정입니다."),
        ("공개매수란?", "불특정 다수에게 장외에서 주식을 사겠다고 공고하는 것입니다."),
        ("주주총회 특별결의 요건은?", "출석 주주 의결권의 3분의 2 이상과 발행주식총수의 3분의 1 이상입니다."),
        ("실사란 무엇인가요?", "대상 회사를 조사하는 절차입니다."),  # the rank-1 answer, stored as answer02
        ("배당이란?", "이익을 주주에게 나누어 주는 것입니다."),
    ])
    filtered = json.loads((in_tmp / "metrics/filter.json").read_text())
    assert filtered["dropped"]["excluded_category"] == 2 and filtered["dropped"]["echo"] == 1
    assert json.loads((in_tmp / "metrics/merge.json").read_text())["exact_duplicates_removed"] == 1


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
    metrics = json.loads((in_tmp / "metrics/extract.json").read_text())
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
    return {row["id"]: (name, row["messages"][1]["content"]) for name in ("train", "val", "test")
            for row in read_jsonl(root / f"data/processed/{name}.jsonl")}


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
    leakage = json.loads((in_tmp / "metrics/split.json").read_text())["leakage"]
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
