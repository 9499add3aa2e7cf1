"""MLflow runs: params, per-step and final metrics, artifacts, dataset inputs, tags.

The default store is `sqlite:///<repo root>/mlflow.db` with artifacts in
`<repo root>/mlartifacts`. The root is DVC_ROOT when DVC sets it, so `dvc exp run
--temp/--queue`, which runs in a copy under .dvc/tmp/exps/, logs into the same store.
Model versions and aliases live in registry.py; the promotion policy in promotion.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..params import MlflowParams
from ..workspace import project_root


def tracking_uri(params: MlflowParams) -> str:
    """params first, then MLflow's own MLFLOW_TRACKING_URI (handy for a team server or a
    fresh clone that shares another clone's store), then the repository's sqlite file."""
    return params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def connect(params: MlflowParams):
    """(mlflow, a client, the URI). Fluent calls (log_model, register_model) need the URI
    set in mlflow, but mlflow also exports it as MLFLOW_TRACKING_URI, which would then
    outrank params for every later client and child process: the environment is restored."""
    import mlflow

    uri = tracking_uri(params)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    try:
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)  # reachable and readable, or one line now
    except Exception as exc:  # sqlalchemy, requests and MLflow errors alike
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"MLflow store {uri} cannot be used ({type(exc).__name__}: {detail}); check "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI"
        ) from None
    return mlflow, client, uri


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def dirty_files(outputs: list[str]) -> list[str]:
    """Tracked files that differ from the commit, leaving out what the pipeline writes itself
    (dvc.lock and the stages' tracked outputs, passed in `outputs`). Inside `dvc exp run`,
    params.yaml is left out too: the experiment's params are its own, DVC stores them with
    the experiment and the run logs every value."""
    excluded = ["dvc.lock", *outputs]
    if os.environ.get("DVC_EXP_NAME"):
        excluded.append("params.yaml")
    pathspec = [".", *(f":(exclude){path}" for path in excluded)]
    return _git("diff", "--name-only", "HEAD", "--", *pathspec).splitlines()


def git_info(outputs: Sequence[str] = ()) -> dict[str, str]:
    """The commit, whether the code, params or inputs differ from it, and the DVC experiment."""
    dirty = dirty_files(list(outputs))
    info = {"git_commit": _git("rev-parse", "HEAD") or "unknown", "git_dirty": str(bool(dirty)).lower()}
    if dirty:
        info["git_dirty_files"] = ", ".join(dirty[:20]) + (f" (+{len(dirty) - 20} more)" if len(dirty) > 20 else "")
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            info[tag] = os.environ[env]
    return info


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


def _owner() -> dict[str, str]:
    return {"mna_tune.host": socket.gethostname(), "mna_tune.pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def sqlite_write_problem(database: Path) -> str | None:
    """Why SQLite could not write `database` (None when it can), found by trying: a file
    beside it (SQLite's journal goes there) and a table created in a transaction that is
    rolled back, so nothing is written. Permission bits alone say nothing to root, while a
    read-only mount or an immutable file stops root too."""
    import sqlite3
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=database.parent, prefix=".write-probe-"):
            pass
        if database.exists():
            db = sqlite3.connect(f"{database.as_uri()}?mode=rw", uri=True, timeout=30)
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("CREATE TABLE mna_tune_write_probe (x)")  # SQLite opens read-only files read-only
                db.rollback()
            finally:
                db.close()
    except (OSError, sqlite3.Error) as exc:
        return str(exc)
    return None


class Tracker:
    """One experiment's runs in the tracking store."""

    def __init__(self, params: MlflowParams):
        self.mlflow, self.client, self.uri = connect(params)
        self.params = params
        self.experiment_id = self._experiment_id()

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.params.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the db, not in the (temporary) cwd
            location = (Path(self.uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
        try:
            experiment_id = self.client.create_experiment(self.params.experiment, artifact_location=location)
        except self.mlflow.exceptions.MlflowException:
            return self.client.get_experiment_by_name(self.params.experiment).experiment_id  # created meanwhile
        # Open it in the UI's model-training view (runs, metrics, registry), not the GenAI one.
        self.client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
        return experiment_id

    def start_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """A new run, tagged with this process so a later start can tell it was killed."""
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={**tags, **_owner()})
        values = [Param(key, str(value) if value is not None else "null") for key, value in flatten("", params).items()]
        for start in range(0, len(values), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=values[start : start + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        values = [Metric(key, value, stamp, step or 0) for key, value in _numbers(metrics).items()]
        for start in range(0, len(values), 1000):
            self.client.log_batch(run_id, metrics=values[start : start + 1000])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        import pandas as pd

        self.client.log_table(run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def end_run(self, run_id: str, status: str = "FINISHED", error: BaseException | None = None) -> None:
        """FINISHED, FAILED (the error, in one line, as the `error` tag) or KILLED."""
        if error is not None:
            message = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
            self.set_tags(run_id, {"error": message[:500]})
        self.client.set_terminated(run_id, status=status)

    def claim(self, run_id: str) -> None:
        """This process now owns the run (an interrupted run that is resumed)."""
        self.set_tags(run_id, _owner())

    def end_orphans(self) -> list[str]:
        """Runs of this experiment left RUNNING by a process of this machine that is gone (killed,
        or the machine restarted) are marked KILLED. Runs of other machines are left alone."""
        ended = []
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            if tags.get("mna_tune.host") != socket.gethostname() or not tags.get("mna_tune.pid", "").isdigit():
                continue
            if _alive(int(tags["mna_tune.pid"])):
                continue
            self.set_tags(run.info.run_id, {"error": f"process {tags['mna_tune.pid']} ended without closing the run"})
            self.client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
        return ended

    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def check_writable(self, run_id: str, source: str) -> None:
        """Before any model work: the run that `source` names is in the store, and a sqlite
        store can be written (evaluate registers the adapter there at the end)."""
        try:
            self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException:
            raise ValueError(
                f"MLflow run {run_id} (named in {source}) is not in {self.uri}: the store was "
                "deleted or replaced, or DVC restored the adapter from a run cache shared with "
                "another store; train again (dvc repro --force --single-item train, "
                "or dvc exp run --force)"
            ) from None
        if self.uri.startswith("sqlite:///"):
            database = Path(self.uri.removeprefix("sqlite:///"))
            problem = sqlite_write_problem(database)
            if problem:
                raise ValueError(
                    f"{database}: the MLflow store cannot be written ({problem}); evaluate registers "
                    "the adapter there: make the file and its folder writable"
                )

    def step_callback(self, run_id: str):
        """A transformers TrainerCallback that logs every logged step (loss, lr, grad norm)."""
        from transformers import TrainerCallback

        tracker = self

        class _StepLogger(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    tracker.log_metrics(run_id, {f"train/{k}": v for k, v in logs.items()}, step=state.global_step)

        return _StepLogger()

    # ---- datasets ----

    def log_datasets(self, run_id: str, datasets: list[dict]) -> None:
        """Each {name, path, md5, rows, context} as an MLflow dataset input whose digest is
        the DVC md5 (MLflow's own pandas digest reads only the first 10,000 rows)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if not datasets:
            return
        inputs = [
            DatasetInput(
                dataset=Dataset(
                    name=d["name"],
                    digest=d["md5"],
                    source_type="local",
                    source=json.dumps({"uri": d["path"]}),
                    profile=json.dumps({"num_rows": d["rows"]}),
                ),
                tags=[InputTag(key="mlflow.data.context", value=d["context"])],
            )
            for d in datasets
        ]
        self.client.log_inputs(run_id, datasets=inputs)

    def run_datasets(self, run_id: str) -> list[dict]:
        out = []
        for item in self.client.get_run(run_id).inputs.dataset_inputs:
            ds = item.dataset
            profile = json.loads(ds.profile) if ds.profile else {}
            context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
            out.append(
                {
                    "name": ds.name,
                    "path": json.loads(ds.source).get("uri", ""),
                    "md5": ds.digest,
                    "rows": profile.get("num_rows"),
                    "context": context,
                }
            )
        return out
