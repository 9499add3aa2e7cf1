import os

from mna_tune.registry.tracking import Tracker, tracking_uri

from helpers import repo_params

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
