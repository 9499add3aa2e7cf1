import contextlib
import os
import subprocess

import pytest

from helpers import repo_params
from mna_tune.registry.tracking import Tracker, tracking_uri

MLFLOW = repo_params().mlflow


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(MLFLOW) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(MLFLOW) == "http://127.0.0.1:5999"
    assert tracking_uri(MLFLOW.model_copy(update={"tracking_uri": "sqlite:////x/y.db"})) == "sqlite:////x/y.db"


def test_tracker_leaves_the_environment_alone_and_keeps_artifacts_beside_the_db(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path)  # like a dvc exp --temp copy: cwd is not the root
    tracker = Tracker(MLFLOW)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "repo" / "mlartifacts").as_uri()
    assert Tracker(MLFLOW).experiment_id == tracker.experiment_id


@contextlib.contextmanager
def unwritable(path):
    """`path` that nobody can write, root included: immutable (chattr +i) when running as
    root, else without write permission."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("root ignores permissions and this file system has no immutable flag (chattr +i)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)


def test_a_store_that_cannot_be_written_is_one_line_before_any_model_work(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(MLFLOW)
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.check_writable(run_id, "models/train_run.json")  # a writable store passes
    for path in (tmp_path / "mlflow.db", tmp_path):  # the file, or its folder (SQLite's journal goes there)
        with unwritable(path), pytest.raises(ValueError) as refused:
            tracker.check_writable(run_id, "models/train_run.json")
        message = str(refused.value)
        assert (
            message.startswith(f"{tmp_path / 'mlflow.db'}: the MLflow store cannot be written (")
            and "\n" not in message
        )
        assert message.endswith("make the file and its folder writable")
    tracker.check_writable(run_id, "models/train_run.json")  # and it was left as it was
