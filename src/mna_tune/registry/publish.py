"""Publishing an evaluated adapter: what it is compared with (decided before any model runs),
its registry version (a new one, or the one already holding this exact adapter), its figures
on the run, and the gate. Evaluation hands over plain figures and gets a `Published` back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..decoding import serving_config
from ..params import Params
from ..workspace import file_md5
from .lineage import lineage_from_lock, workspace_md5
from .promotion import GateDecision, apply_gate, decide
from .registry import ADAPTER_MD5, CHAMPION, Registry
from .tracking import Tracker, git_info

LOGGED_MODEL_URI = "models:/"  # a version's source when it was logged as an MLflow LoggedModel


@dataclass(frozen=True)
class Comparison:
    """What the candidate is compared with, known before any model runs."""

    adapter_md5: str
    registered_as: str | None  # the version holding this adapter when evaluation began, or None
    test_md5: str
    champion: str | None  # the champion version the gate compares with (never the candidate itself)
    champion_metrics: dict | None  # its figures on this test split, None when they must be computed here
    note: str  # which split, and where the champion's figures come from

    @property
    def evaluate_champion(self) -> bool:
        return self.champion is not None and self.champion_metrics is None


@dataclass(frozen=True)
class Published:
    version: str
    decision: GateDecision
    verified: bool  # dvc.lock vouches for the split files evaluated here
    new: bool  # False: the adapter was already registered (a run-cache restore, the same training twice)
    version_run: str  # the MLflow run the version was registered from
    model_id: str | None  # the version's MLflow LoggedModel: its evaluation traces link to it


def lineage_paths(params: Params) -> dict[str, list[str]]:
    """The inputs whose dvc.lock md5 a version carries, by the stage that reads them."""
    raw_filter = [str(params.filter.lexicon_path)]
    if params.filter.scorer == "column":
        raw_filter.append(str(params.filter.scores_path))
    splits = params.paths.split
    return {
        "extract": [str(params.data.aihub_dir)],
        "filter": raw_filter,
        "merge": [str(params.data.mna_path)],
        "split": [str(splits.train), str(splits.val), str(splits.test)],
    }


def comparison(params: Params) -> Comparison:
    """The candidate adapter, whether it is registered already, and the champion to beat with
    its figures on this test split. A champion's own figures count only when it was evaluated
    on the same test split and has the gate's metric (a run without the judge lacks the
    judge's); otherwise it must be evaluated on these rows first."""
    registry = Registry(params.mlflow)
    adapter_md5 = workspace_md5(params.paths.train.adapter)
    if adapter_md5 is None:
        raise FileNotFoundError(2, "the adapter is missing", str(params.paths.train.adapter))
    existing = registry.with_adapter(adapter_md5)
    registered_as = str(existing.version) if existing is not None else None
    test_md5 = file_md5(params.paths.split.test)
    split = f"test split {test_md5[:12]}"
    champion = registry.alias_version(CHAMPION)
    if champion is None or str(champion.version) == registered_as:  # the champion itself: judged against base
        return Comparison(adapter_md5, registered_as, test_md5, None, None, split)
    version, metric = str(champion.version), params.evaluate.gate.metric
    if champion.tags.get(f"lineage.split.{params.paths.split.test}") == test_md5:
        metrics = registry.run_metrics(champion.run_id, "eval/adapter/")
        if metric in metrics:
            return Comparison(adapter_md5, registered_as, test_md5, version, metrics, f"{split}, the champion's own")
        why = f"its evaluation has no {metric}"
    else:
        why = "it was evaluated on another test split"
    print(f"evaluate: champion v{version}: {why}: evaluating it on this one")
    return Comparison(
        adapter_md5, registered_as, test_md5, version, None, f"{split}, champion v{version} re-evaluated on it"
    )


def publish(
    params: Params,
    run_id: str,
    compared: Comparison,
    overall: dict,
    throughput: dict,
    headline: str,
    champion_metrics: dict | None,
    certify=None,
    lock: Path = Path("dvc.lock"),
) -> Published:
    """Register the candidate (or reuse the version that holds it), log its figures on the
    run, then apply the gate against `champion_metrics` (the champion's figures on this split)."""
    tracker, registry = Tracker(params.mlflow), Registry(params.mlflow)
    lineage = lineage_from_lock(lock, lineage_paths(params))
    # The lock must describe the split files evaluated here; a stale lock (a stage run by
    # hand outside DVC) is flagged rather than trusted.
    verified = all(lineage.get(f"lineage.split.{path}") == file_md5(path) for path in lineage_paths(params)["split"])
    # Looked up again, not taken from `compared`: another experiment may have registered the
    # same adapter while this one evaluated.
    existing = registry.with_adapter(compared.adapter_md5)
    if existing is not None:  # never a second version of one adapter, never another run's tags
        version, version_run = str(existing.version), existing.run_id
        print(
            f"evaluate: this adapter ({compared.adapter_md5}) is already registered as v{version} "
            f"(MLflow run {version_run}): this evaluation is recorded as a re-evaluation of v{version}"
        )
        if version_run != run_id:
            tracker.set_tags(run_id, {"registered_version": f"{version} (already registered from run {version_run})"})
        source = existing.source
    else:
        tracker.log_metrics(
            run_id,
            {
                f"eval/{name}/{key}": value
                for name in ("adapter", "base", "delta")
                for key, value in overall[name].items()
            },
        )
        tracker.log_metrics(run_id, {f"eval/{name}/gen_tokens_per_second": value for name, value in throughput.items()})
        git = {
            key: value for key, value in git_info(params.paths.outputs()).items() if key in ("git_commit", "git_dirty")
        }
        # what an auditor needs on the version's page (at most 15 tags; the rest is on the run)
        tags = {
            **git,
            **lineage,
            "lineage.verified": str(verified).lower(),
            ADAPTER_MD5: compared.adapter_md5,
            "eval.headline": headline,
        }
        registered = registry.register(run_id, params.paths.train.adapter, serving_config(params), tags)
        version, version_run, source = str(registered.version), run_id, registered.source
        tracker.set_tags(run_id, {"registered_model": registry.name, "registered_version": version})
    champion = None
    if compared.champion is not None:
        if champion_metrics is None:  # never compared with the base model instead
            raise ValueError(f"evaluate: champion v{compared.champion} has no figures on this test split")
        champion = (compared.champion, champion_metrics)
    if existing is None:
        refused_by = None
        if certify is not None:  # every way the version is used answers as evaluated, or the gate refuses
            lines, refused_by = certify(registry, registry.version(version))
            registry.set_version_tags(version, {f"parity.{path}": line for path, line in lines.items()})
        decision = apply_gate(
            registry,
            version,
            overall["adapter"],
            overall["base"],
            params.evaluate.gate,
            champion,
            compared.note,
            refused_by,
        )
    else:  # a re-evaluation: added to the version's record; no alias moves, no decision is rewritten
        verdict = decide(
            params.evaluate.gate, overall["adapter"], champion[1] if champion else None, overall["base"],
            champion[0] if champion else None,
        )  # fmt: skip
        decision = GateDecision(
            False,
            f"re-evaluation of v{version}: the gate is not applied again (aliases and earlier decisions stay as "
            f"they were); on these figures it would have {'passed' if verdict.passed else 'refused'}: "
            f"{verdict.reason} ({compared.note})",
        )
        registry.append_record(version, f"re-evaluated in MLflow run {run_id}: {decision.reason}")
    if existing is None:  # the version page renders this in full (tags sit in a small scroll box)
        registry.describe(version, description(registry.version(version).tags, decision, run_id))
    model_id = source.removeprefix(LOGGED_MODEL_URI) if source.startswith(LOGGED_MODEL_URI) else None
    return Published(version, decision, verified, existing is None, version_run, model_id)


def description(tags: dict[str, str], decision: GateDecision, run_id: str) -> str:
    """The version's page in Markdown: figures, gate decision, code and data (content hashes)."""
    lines = [
        f"**Figures** {tags.get('eval.headline', '?')}",
        "",
        f"**Gate** {'passed: champion' if decision.passed else 'not passed'}: {decision.reason}",
        "",
        f"**Code** commit `{tags.get('git_commit')}` (uncommitted changes: {tags.get('git_dirty')}); "
        f"MLflow run `{run_id}`; adapter md5 `{tags.get(ADAPTER_MD5)}`",
        "",
        f"**Data** (dvc.lock md5s; verified at evaluation: {tags.get('lineage.verified')})",
        "",
        "| stage | path | md5 |",
        "|---|---|---|",
    ]
    for key, md5 in sorted(tags.items()):
        if key.startswith("lineage.") and key != "lineage.verified":
            stage, _, path = key.removeprefix("lineage.").partition(".")
            lines.append(f"| {stage} | `{path}` | `{md5}` |")
    if lines[-1] == "|---|---|---|":
        lines.append("| - | no dvc.lock lineage: nothing vouches for the data | - |")
    lines += ["", "Later decisions are in the version's `record.*` tags: `mna-tune audit <version>` prints them."]
    return "\n".join(lines)
