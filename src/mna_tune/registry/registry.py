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
RECORD_PREFIX = "record."  # version tags: the version's append-only record, one tag a line
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

    def describe(self, version: str, markdown: str) -> None:
        self.client.update_model_version(self.name, str(version), description=markdown)

    def append_record(self, version: str, text: str) -> None:
        """Add one line to the version's record (who, when and what happened to it: a swap a
        server refused, a decision). Each line is a tag of its own, keyed by the time and a
        random suffix, so no two writers ever overwrite each other and nothing earlier changes."""
        import getpass
        import secrets
        import time

        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        key = f"{RECORD_PREFIX}{stamp}-{secrets.token_hex(2)}"
        self.client.set_model_version_tag(self.name, str(version), key, f"{getpass.getuser()}: {text}")

    def records(self, version) -> list[tuple[str, str]]:
        """(when, line) of the version's record, oldest first."""
        tags = version.tags if hasattr(version, "tags") else self.version(str(version)).tags
        return [
            (key[len(RECORD_PREFIX) :].rpartition("-")[0], value)
            for key, value in sorted(tags.items())
            if key.startswith(RECORD_PREFIX)
        ]

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
