"""The model registry: every adapter is a version of `mlflow.registered_model`, an MLflow
pyfunc model ("models from code": serving/pyfunc_entry.py + the adapter + a small JSON
naming the base model, no pickles, no base weights), found by number or alias."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..decoding import SERVING_CONFIG
from ..params import MlflowParams
from .tracking import connect

CHAMPION, CANDIDATE = "champion", "candidate"
ADAPTER_MD5 = "adapter.md5"  # version tag: the adapter folder's content hash (as dvc.lock records it)
PYFUNC_ENTRY = Path(__file__).parents[1] / "serving" / "pyfunc_entry.py"
SERVED_PACKAGES = ("torch", "transformers", "peft", "mlflow", "tokenizers", "tiktoken", "dashscope", "pandas")


class Registry:
    def __init__(self, params: MlflowParams):
        self.mlflow, self.client, self.uri = connect(params)
        self.name = params.registered_model

    def register(self, run_id: str, adapter_dir: Path, serving_config: dict, tags: dict[str, str]):
        """Log the adapter as a pyfunc model in the run and register it as a new version, so
        `mlflow.pyfunc.load_model("models:/<name>@champion")` works."""
        from importlib.metadata import version as installed

        import mlflow.pyfunc

        requirements = [f"{name}=={installed(name).split('+')[0]}" for name in SERVED_PACKAGES]
        with tempfile.TemporaryDirectory() as scratch:
            config_path = Path(scratch) / SERVING_CONFIG
            config_path.write_text(json.dumps(serving_config, ensure_ascii=False, indent=2), encoding="utf-8")
            with self.mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="adapter_model",
                    python_model=str(PYFUNC_ENTRY),
                    pip_requirements=requirements,
                    artifacts={"adapter": str(adapter_dir), "serving_config": str(config_path)},
                )
        return self.mlflow.register_model(info.model_uri, self.name, tags=tags)

    def version(self, ref: str):
        """`7` or `@champion` -> the registry's ModelVersion; an unknown one is a one-line error
        that says what exists and, for a champion the gate never chose, what to do."""
        try:
            if str(ref).startswith("@"):
                return self.client.get_model_version_by_alias(self.name, str(ref)[1:])
            return self.client.get_model_version(self.name, str(ref))
        except self.mlflow.exceptions.MlflowException:
            known = self.all_versions()
            if ref == f"@{CHAMPION}" and known:
                last = known[-1]
                reason = last.tags.get("gate.reason", "no gate decision recorded")
                raise ValueError(
                    f"{self.name}: no version is champion yet; the gate refused v{last.version}: {reason}. "
                    f"Either promote one by hand (mna-tune promote {last.version} --reason '...') or use "
                    f"--model @{CANDIDATE}"
                ) from None
            listed = ", ".join(f"v{v.version}" for v in known) or "none yet"
            raise ValueError(f"{self.name}: no model version '{ref}' in {self.uri} (registered: {listed})") from None

    def with_adapter(self, adapter_md5: str):
        """The version already holding an adapter with this content hash, or None."""
        for version in self.all_versions():
            if version.tags.get(ADAPTER_MD5) == adapter_md5:
                return version
        return None

    def alias_version(self, alias: str):
        """The version holding `alias`, or None."""
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except self.mlflow.exceptions.MlflowException:
            return None

    def run_metrics(self, run_id: str, prefix: str) -> dict[str, float]:
        """A run's logged metrics whose names start with `prefix`, the prefix removed."""
        logged = self.client.get_run(run_id).data.metrics
        return {key.removeprefix(prefix): value for key, value in logged.items() if key.startswith(prefix)}

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, str(version))

    def set_version_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, value)

    def model_tag(self, key: str) -> str:
        return self.client.get_registered_model(self.name).tags.get(key, "")

    def set_model_tag(self, key: str, value: str) -> None:
        self.client.set_registered_model_tag(self.name, key, value)

    def all_versions(self) -> list:
        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except self.mlflow.exceptions.MlflowException:
            return []
        return sorted(found, key=lambda v: int(v.version))

    def load_pyfunc(self, version):
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(version.source)

    def download_adapter(self, version, destination: Path) -> Path:
        """The PEFT folder inside a registered version's pyfunc artifact."""
        local = Path(
            self.mlflow.artifacts.download_artifacts(
                artifact_uri=version.source, dst_path=str(destination), tracking_uri=self.uri
            )
        )
        found = sorted(local.rglob("adapter_config.json"))
        if not found:
            raise ValueError(f"version {version.version}: no adapter_config.json in {version.source}")
        return found[0].parent
