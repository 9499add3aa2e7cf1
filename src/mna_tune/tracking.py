"""MLflow: the only room that talks to it. Runs, per-step metrics, artifacts, the adapter
registry and lineage tags (git commit + the dvc.lock md5 of every raw input and split).

The default store is `sqlite:///<repo root>/mlflow.db` with artifacts in
`<repo root>/mlartifacts`. The root is DVC_ROOT when DVC sets it, so `dvc exp run
--temp/--queue`, which runs in a copy under .dvc/tmp/exps/, logs into the same store.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .params import MlflowParams
from .workspace import project_root


def tracking_uri(params: MlflowParams) -> str:
    """params first, then MLflow's own MLFLOW_TRACKING_URI (handy for a team server or a
    fresh clone that shares another clone's store), then the repository's sqlite file."""
    return (params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{project_root() / 'mlflow.db'}")


def git_info() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    info = {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}
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


class Tracker:
    def __init__(self, params: MlflowParams):
        import mlflow

        self.mlflow = mlflow
        self.params = params
        self.uri = tracking_uri(params)
        # Fluent calls (log_model, register_model) need the URI set in mlflow, but mlflow also
        # exports it as MLFLOW_TRACKING_URI, which would then outrank params for every later
        # Tracker and child process. Keep the environment as the user left it.
        before = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        self.client = mlflow.MlflowClient(self.uri)
        self.experiment_id = self._experiment_id()

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.params.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the db, not in the (temporary) cwd
            location = (Path(self.uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(self.params.experiment, artifact_location=location)
        except self.mlflow.exceptions.MlflowException:
            return self.client.get_experiment_by_name(self.params.experiment).experiment_id  # created meanwhile

    def start_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        for key, value in flatten("", params).items():
            self.client.log_param(run.info.run_id, key, value if value is not None else "null")
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.client.log_metric(run_id, key, float(value), step=step or 0)

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def register_adapter(self, run_id: str, adapter_dir: Path, serving_config: dict, tags: dict[str, str]):
        """Log the adapter as an MLflow pyfunc model (code + adapter + base-model reference,
        no base weights) in the run, and register it as a new version of
        mlflow.registered_model, so `mlflow.pyfunc.load_model("models:/<name>@champion")` works."""
        import tempfile
        from importlib.metadata import version as installed

        import mlflow.pyfunc

        entry = Path(__file__).with_name("pyfunc_entry.py")
        requirements = [f"{name}=={installed(name).split('+')[0]}" for name in
                        ("torch", "transformers", "peft", "mlflow", "tokenizers", "tiktoken", "dashscope", "pandas")]
        with tempfile.TemporaryDirectory() as scratch:
            config_path = Path(scratch) / "serving_config.json"
            config_path.write_text(json.dumps(serving_config, ensure_ascii=False, indent=2), encoding="utf-8")
            with self.mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="adapter_model", python_model=str(entry), pip_requirements=requirements,
                    artifacts={"adapter": str(adapter_dir), "serving_config": str(config_path)})
        return self.mlflow.register_model(info.model_uri, self.params.registered_model, tags=tags)

    def step_callback(self, run_id: str):
        """A transformers TrainerCallback that logs every logged step (loss, lr, grad norm)."""
        from transformers import TrainerCallback

        tracker = self

        class _StepLogger(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs:
                    tracker.log_metrics(run_id, {f"train/{k}": v for k, v in logs.items()}, step=state.global_step)

        return _StepLogger()

    # ---- aliases and the promotion gate ----

    CHAMPION, CANDIDATE = "champion", "candidate"
    _HISTORY_TAG = "champion_history"

    def version(self, version: str):
        return self.client.get_model_version(self.params.registered_model, str(version))

    def alias_version(self, alias: str):
        try:
            return self.client.get_model_version_by_alias(self.params.registered_model, alias)
        except self.mlflow.exceptions.MlflowException:
            return None

    def _history(self) -> list[str]:
        model = self.client.get_registered_model(self.params.registered_model)
        value = model.tags.get(self._HISTORY_TAG, "")
        return [v for v in value.split(",") if v]

    def _set_champion(self, version: str, history: list[str]) -> None:
        name = self.params.registered_model
        self.client.set_registered_model_alias(name, self.CHAMPION, str(version))
        self.client.set_registered_model_tag(name, self._HISTORY_TAG, ",".join(history))

    def set_candidate(self, version: str) -> None:
        self.client.set_registered_model_alias(self.params.registered_model, self.CANDIDATE, str(version))

    def record_decision(self, version: str, passed: bool, reason: str, how: str) -> None:
        """The gate's (or a person's) decision, on the version and on its run."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tags = {"gate.passed": str(passed).lower(), "gate.reason": reason, "gate.decided_by": how,
                "gate.decided_at": stamp}
        for key, value in tags.items():
            self.client.set_model_version_tag(self.params.registered_model, str(version), key, value)
        run_id = self.version(version).run_id
        if run_id:
            self.set_tags(run_id, tags)

    def promote(self, version: str, reason: str, how: str) -> str | None:
        """Point `champion` at `version`; returns the version it pointed at before."""
        previous = self.alias_version(self.CHAMPION)
        history = self._history()
        if not history or history[-1] != str(version):
            history.append(str(version))
        self._set_champion(str(version), history)
        self.record_decision(version, True, reason, how)
        return str(previous.version) if previous else None

    def rollback(self, reason: str) -> tuple[str, str]:
        """Move `champion` back to the version that held it before; returns (from, to)."""
        history = self._history()
        if len(history) < 2:
            raise ValueError(f"{self.params.registered_model}: no earlier champion to roll back to "
                             f"(champion history: {history or 'empty'})")
        current, target = history[-1], history[-2]
        self._set_champion(target, history[:-1])
        for key, value in {"rollback.reason": reason, "rollback.to": target}.items():
            self.client.set_model_version_tag(self.params.registered_model, current, key, value)
        return current, target

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        import pandas as pd

        self.client.log_table(run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    # ---- datasets and lineage queries ----

    def log_datasets(self, run_id: str, datasets: list[dict]) -> None:
        """Each {name, path, md5, rows, context} as an MLflow dataset input whose digest is
        the DVC md5 (MLflow's own pandas digest reads only the first 10,000 rows)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if not datasets:
            return
        inputs = [DatasetInput(
            dataset=Dataset(name=d["name"], digest=d["md5"], source_type="local",
                            source=json.dumps({"uri": d["path"]}), profile=json.dumps({"num_rows": d["rows"]})),
            tags=[InputTag(key="mlflow.data.context", value=d["context"])],
        ) for d in datasets]
        self.client.log_inputs(run_id, datasets=inputs)

    def run_datasets(self, run_id: str) -> list[dict]:
        out = []
        for item in self.client.get_run(run_id).inputs.dataset_inputs:
            ds = item.dataset
            profile = json.loads(ds.profile) if ds.profile else {}
            context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
            out.append({"name": ds.name, "path": json.loads(ds.source).get("uri", ""), "md5": ds.digest,
                        "rows": profile.get("num_rows"), "context": context})
        return out

    def resolve_version(self, ref: str):
        """`7` or `@champion` -> the registry's ModelVersion (a clear error if unknown)."""
        name = self.params.registered_model
        try:
            if ref.startswith("@"):
                return self.client.get_model_version_by_alias(name, ref[1:])
            return self.client.get_model_version(name, ref)
        except self.mlflow.exceptions.MlflowException:
            raise ValueError(f"{name}: no model version '{ref}' in {self.uri}") from None

    def all_versions(self) -> list:
        found = self.client.search_model_versions(f"name='{self.params.registered_model}'")
        return sorted(found, key=lambda v: int(v.version))

    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def load_pyfunc(self, version):
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(version.source)

    def download_adapter(self, version, destination: Path) -> Path:
        """The PEFT folder inside a registered version's pyfunc artifact."""
        local = Path(self.mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(destination),
                                                              tracking_uri=self.uri))
        found = sorted(local.rglob("adapter_config.json"))
        if not found:
            raise ValueError(f"version {version.version}: no adapter_config.json in {version.source}")
        return found[0].parent
