"""A stage's params and inputs must not change under it (two runs in one workspace)."""

import pytest
import yaml

from mna_tune.workspace import StageInputsChanged, check_stage_inputs, stage_inputs


def project(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/in.txt").write_text("rows\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code/a.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.001, "seed": 1}, "paths": {
        "input": "data/in.txt"}}))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "x", "deps": ["code", "${paths.input}"], "params": ["train.lr"]}}}))
    return tmp_path


def test_unchanged_inputs_pass_and_a_param_change_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(project(tmp_path))
    before = stage_inputs("train")
    assert "params train.lr" in before and "data/in.txt" in before and "code/a.py" in before
    check_stage_inputs("train", before)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["seed"] = 2  # not a key of this stage: DVC's lock for it stays true
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    check_stage_inputs("train", before)
    params["train"]["lr"] = 0.002
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(StageInputsChanged, match=r"params train\.lr \(0\.001 -> 0\.002\) changed while the train "
                                                 r"stage ran.*--queue"):
        check_stage_inputs("train", before)


def test_a_changed_dependency_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(project(tmp_path))
    before = stage_inputs("train")
    (tmp_path / "code/a.py").write_text("x = 22\n")
    with pytest.raises(StageInputsChanged, match="code/a.py changed"):
        check_stage_inputs("train", before)


def test_no_dvc_project_no_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert stage_inputs("train") == {}
    check_stage_inputs("train", {})
