"""A stage's params and inputs must not change under it (two runs in one workspace)."""

import pytest
import yaml

from mna_tune.workspace import StageInputsChanged, check_stage_inputs, stage_inputs


def project(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/in.txt").write_text("rows\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code/a.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"train": {"lr": 0.001, "seed": 1}, "paths": {"input": "data/in.txt"}})
    )
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"train": {"cmd": "x", "deps": ["code", "${paths.input}"], "params": ["train.lr"]}}})
    )
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
    with pytest.raises(
        StageInputsChanged,
        match=r"params train\.lr \(0\.001 -> 0\.002\) changed while the train "
        r"stage ran.*--queue",
    ):
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


def test_a_running_stage_refuses_a_second_experiment_in_its_workspace_but_not_the_queue(tmp_path, monkeypatch):
    """What `dvc exp run` (and `--temp`) and `dvc exp run --queue` lock when they stash the
    workspace, tried against a stage that holds the workspace (DVC's own rwlock)."""
    import pytest
    from dvc.fs import localfs
    from dvc.lock import LockError
    from dvc.repo.experiments.refs import CELERY_STASH, WORKSPACE_STASH
    from dvc.rwlock import rwlock

    from mna_tune.workspace import workspace_held

    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    folder = str(tmp_path / ".dvc/tmp/exps")
    with workspace_held("train"):
        busy = pytest.raises(LockError, match="mna-tune train: a stage is running in this workspace")
        with busy, rwlock(folder, localfs, "dvc exp run", [], ["workspace", WORKSPACE_STASH], False):
            pass
        with rwlock(folder, localfs, "dvc exp run --queue", [], ["workspace", CELERY_STASH], False):
            pass  # queueing stays possible
    with rwlock(folder, localfs, "dvc exp run", [], ["workspace", WORKSPACE_STASH], False):
        pass  # released when the stage ends


def test_a_stage_waits_for_a_dvc_command_that_holds_the_workspace_then_says_so(tmp_path, monkeypatch):
    import pytest
    from dvc.fs import localfs
    from dvc.repo.experiments.refs import WORKSPACE_STASH
    from dvc.rwlock import rwlock

    from mna_tune import workspace
    from mna_tune.workspace import StageInputsChanged, workspace_held

    (tmp_path / ".dvc/tmp/exps").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(workspace, "HOLD_ATTEMPTS", 2)
    with (
        rwlock(
            str(tmp_path / ".dvc/tmp/exps"), localfs, "dvc exp run -n other", [], ["workspace", WORKSPACE_STASH], False
        ),
        pytest.raises(
            StageInputsChanged,
            match="the train stage cannot start: another DVC experiment command "
            "holds this workspace .*dvc exp run -n other",
        ),
        workspace_held("train"),
    ):
        pass
