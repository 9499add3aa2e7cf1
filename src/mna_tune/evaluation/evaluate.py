"""evaluate stage: base model vs adapter on the test split, Korean-aware metrics overall,
per source and per category, a report, and the registry with the promotion gate.

Read top to bottom in `run_evaluate`: run both models, score them, write the outputs,
register the adapter and apply the gate, write the report. The base model's outputs are
cached (under <repo root>/.cache/base_eval) by everything that makes them what they are,
so experiments that only change training do not pay for the base model again.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

from ..chat import answer_of, question_of, strip_think
from ..decoding import SERVING_CONFIG, GenerationSettings, serving_config, settings_of
from ..params import Params
from ..workspace import (
    atomic_open,
    file_md5,
    project_root,
    read_jsonl,
    write_json,
    write_jsonl,
)
from .answering import ADAPTER, BASE, answering
from .generation import answer_only_losses
from .scoring import ModelRun, add_row_details, compare, score_rows

PLOTTED = (
    "rougeL_f1",
    "chrf",
    "korean_only_share",
    "exact_match",
    "domain_term_recall",
    "domain_term_precision",
    "consistency_rougeL",
    "judge_win_rate",
    "judge_rubric_mean",
)
# the DVC metrics, per model and delta (the judge's only when it is enabled)
HEADLINE = ("rougeL_f1", "chrf", "eval_loss", "korean_only_share", "judge_win_rate", "judge_rubric_mean")
PACKAGE = Path(__file__).parents[1]


@dataclass
class Evaluation:
    """Everything one evaluation produced, before it is written anywhere."""

    rows: list[dict]  # every test row (losses)
    generated: list[dict]  # the rows answers were generated for
    runs: dict[str, ModelRun]  # "adapter", "base"
    base_from_cache: bool
    overall: dict  # adapter, base and delta figures on every test row
    by_group: dict  # the same per source and per category
    predictions: list[dict]  # one row per generated test row
    throughput: dict  # generated tokens/s per model: changes from run to run, so MLflow only
    engine: str = "transformers"  # what generated the answers, with its version


def base_identity(params: Params) -> dict:
    """What makes the base model's outputs what they are: the model, the code that loads
    it and generates, and the library versions."""
    from ..modeling import resolve_base

    source = resolve_base(params.model.base)
    identity: dict[str, Any] = {
        "model": params.model.model_dump(mode="json"),
        "kind": source.kind,
        "name": source.name,
        "code": {
            name: file_md5(PACKAGE / name)
            for name in ("chat.py", "modeling.py", "qwen_tokenizer.py", "evaluation/generation.py")
        },
        "libraries": {name: installed(name) for name in ("torch", "transformers", "peft")},
    }
    if source.kind == "folder":
        folder = Path(source.name)
        identity["config_md5"] = file_md5(folder / "config.json")
        identity["weights"] = sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))
    return identity


def base_cache_path(params: Params, test_md5: str, generate_rows: int, engine: dict) -> Path:
    key = json.dumps(
        {
            "base": base_identity(params),
            "generation": asdict(settings_of(params)),
            "test_md5": test_md5,
            "rows": generate_rows,
            "seed": params.train.seed,
            "consistency_samples": params.evaluate.consistency.samples,
            "engine": engine,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return project_root() / params.paths.cache / "base_eval" / f"{digest}.json"


def run_model(
    model,
    tokenizer,
    answers,
    rows: list[dict],
    generated: list[dict],
    settings: GenerationSettings,
    name: str = ADAPTER,
    samples: int = 0,
    seed: int = 0,
) -> ModelRun:
    """Losses on every row (a forward pass of `model`, its adapter off for the base), and from
    `answers` (the engine) the answers for the generated rows and `samples` sampled answers
    each (consistency), with progress bars named after the model."""
    with model.disable_adapter() if name == BASE else nullcontext():
        losses = answer_only_losses(model, tokenizer, rows, settings.batch_size, progress=f"{name}: loss")
    conversations = [r["messages"] for r in generated]
    raw, new_tokens, seconds = answers.generate(name, conversations, settings, progress=f"{name}: generate")
    sampled = answers.sample(name, conversations, settings, samples, seed, progress=f"{name}: sample")
    return ModelRun(losses, raw, new_tokens, seconds, sampled)


def run_models(
    params: Params, model, tokenizer, answers, rows: list[dict], generated: list[dict]
) -> tuple[dict[str, ModelRun], bool]:
    """The adapter, then the same weights with LoRA disabled (the base model), unless the
    base outputs for exactly these rows, settings and engine are cached."""
    from transformers import set_seed

    settings = settings_of(params)
    samples, seed = params.evaluate.consistency.samples, params.train.seed
    set_seed(params.train.seed)
    adapter = run_model(model, tokenizer, answers, rows, generated, settings, ADAPTER, samples, seed)
    cache = base_cache_path(params, file_md5(params.paths.split.test), len(generated), answers.identity)
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        base = ModelRun(
            [tuple(x) for x in data["losses"]],
            data["raw"],
            data["new_tokens"],
            data["seconds"],
            data.get("samples", []),
        )
        return {"adapter": adapter, "base": base}, True
    set_seed(params.train.seed)
    base = run_model(model, tokenizer, answers, rows, generated, settings, BASE, samples, seed)
    write_json(cache, asdict(base))
    return {"adapter": adapter, "base": base}, False


def score(
    params: Params, rows: list[dict], generated: list[dict], runs: dict[str, ModelRun], base_from_cache: bool
) -> Evaluation:
    from ..lexicon import Lexicon

    references = [answer_of(row["messages"]) for row in generated]
    terms = Lexicon.from_tsv(params.filter.lexicon_path).pattern
    answers = {name: [strip_think(text) for text in run.raw] for name, run in runs.items()}
    scores = {
        name: score_rows(answers[name], run.raw, references, terms, run.samples, progress=f"{name}: score")
        for name, run in runs.items()
    }
    overall, by_group = compare(rows, runs, scores, answers, references)
    throughput = {name: overall[name].pop("gen_tokens_per_second") for name in runs}
    adapter, base = runs["adapter"], runs["base"]
    predictions = [
        {
            "id": row["id"],
            "source": row["source"],
            "category": row["category"],
            "question": question_of(row["messages"]),
            "reference": ref,
            "adapter": answers["adapter"][i],
            "base": answers["base"][i],
            "adapter_raw": adapter.raw[i],
            "base_raw": base.raw[i],
            "adapter_rougeL_f1": round(scores["adapter"][i]["rougeL_f1"], 6),
            "base_rougeL_f1": round(scores["base"][i]["rougeL_f1"], 6),
            "adapter_korean_only": scores["adapter"][i]["korean_only"],
            "adapter_loss": round(adapter.losses[i][0] / max(adapter.losses[i][1], 1), 6),
            "base_loss": round(base.losses[i][0] / max(base.losses[i][1], 1), 6),
        }
        for i, (row, ref) in enumerate(zip(generated, references))
    ]
    add_row_details(predictions, scores)  # every per-row figure, for the file and the MLflow traces
    return Evaluation(rows, generated, runs, base_from_cache, overall, by_group, predictions, throughput)


def write_tables(params: Params, result: Evaluation) -> None:
    paths = params.paths.evaluate
    write_jsonl(paths.predictions, result.predictions)
    write_json(
        paths.details,
        {
            "overall": result.overall,
            "by_group": result.by_group,
            "test_rows": len(result.rows),
            "generated_rows": len(result.generated),
            "base_from_cache": result.base_from_cache,
            "engine": result.engine,
        },
    )
    overall = result.overall
    with atomic_open(paths.scores_plot) as out:
        out.write("metric,base,adapter\n")
        for metric in PLOTTED:
            if metric in overall["adapter"]:
                out.write(f"{metric},{overall['base'][metric]},{overall['adapter'][metric]}\n")


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


def champion_on_this_split(params: Params, result: Evaluation, registry, test_md5: str, answers, judge=None):
    """(champion version, its metrics on the test rows evaluated here), or None without a
    champion. Metrics from another test split are never compared, nor a gate metric the
    champion's evaluation lacks (a judge figure from a run without the judge): the
    champion's adapter is then evaluated on these rows first (the base outputs are shared)."""
    from ..registry.registry import CHAMPION

    champion = registry.alias_version(CHAMPION)
    if champion is None:
        return None, f"test split {test_md5[:12]}"
    metric = params.evaluate.gate.metric
    if champion.tags.get(f"lineage.split.{params.paths.split.test}") == test_md5:
        logged = registry.client.get_run(champion.run_id).data.metrics
        metrics = {
            key.removeprefix("eval/adapter/"): value for key, value in logged.items() if key.startswith("eval/adapter/")
        }
        if metric in metrics:
            return (str(champion.version), metrics), f"test split {test_md5[:12]}, the champion's own"
        why = f"its evaluation has no {metric}"
    else:
        why = "it was evaluated on another test split"
    print(f"evaluate: champion v{champion.version}: {why}: evaluating it on this one")
    metrics = evaluate_registered(params, result, registry, champion, answers, judge)
    return (
        str(champion.version),
        metrics,
    ), f"test split {test_md5[:12]}, champion v{champion.version} re-evaluated on it"


def evaluate_registered(params: Params, result: Evaluation, registry, version, answers, judge=None) -> dict:
    """A registered version's adapter on this evaluation's rows, answered by the same engine
    and scored (and judged, with the judge on) like the candidate."""
    import tempfile

    from ..modeling import load_adapter_model, load_tokenizer
    from ..params import ModelParams
    from .judge import judge_evaluation

    with tempfile.TemporaryDirectory() as scratch:
        adapter = registry.download_adapter(version, Path(scratch))
        config = next(Path(scratch).rglob(SERVING_CONFIG), None)
        model_params = (
            ModelParams(**json.loads(config.read_text(encoding="utf-8"))["model"]) if config else params.model
        )
        model = load_adapter_model(model_params, adapter)
        champion = answers.with_adapter(f"champion-v{version.version}", adapter, model)
        run = run_model(
            model, load_tokenizer(model_params.base), champion, result.rows, result.generated, settings_of(params)
        )
    other = score(params, result.rows, result.generated, {"adapter": run, "base": result.runs["base"]}, True)
    judge_evaluation(judge, other)
    return other.overall["adapter"]


def version_tags(params: Params, result: Evaluation, lineage: dict, verified: bool, adapter_md5: str) -> dict:
    """What an auditor needs on the version's page (at most 15 tags; the rest is on the run):
    code, data hashes, the adapter hash and the headline figures. The gate adds three more."""
    from ..registry.registry import ADAPTER_MD5
    from ..registry.tracking import git_info

    git = {key: value for key, value in git_info(params.paths.outputs()).items() if key in ("git_commit", "git_dirty")}
    figures = ", ".join(
        f"{key} {result.overall['adapter'][key]:.4g} ({result.overall['delta'].get(key, 0):+.4g})"
        for key in HEADLINE
        if key in result.overall["adapter"]
    )
    return {
        **git,
        **lineage,
        "lineage.verified": str(verified).lower(),
        ADAPTER_MD5: adapter_md5,
        "eval.headline": f"adapter vs base: {figures}",
    }


def register(params: Params, result: Evaluation, run_id: str, answers, lock: Path = Path("dvc.lock"), judge=None):
    """The adapter's registry version (a new one, or the one already holding this exact
    adapter: a run-cache restore or the same training twice), then the gate.
    Returns (version, gate decision, whether dvc.lock vouches for the evaluated splits,
    whether the version is new, the MLflow run it was registered from)."""
    from ..registry.lineage import lineage_from_lock, workspace_md5
    from ..registry.promotion import apply_gate
    from ..registry.registry import Registry
    from ..registry.tracking import Tracker

    overall = result.overall
    tracker, registry = Tracker(params.mlflow), Registry(params.mlflow)
    lineage = lineage_from_lock(lock, lineage_paths(params))
    # The lock must describe the split files evaluated here; a stale lock (a stage run by
    # hand outside DVC) is flagged rather than trusted.
    verified = all(lineage.get(f"lineage.split.{path}") == file_md5(path) for path in lineage_paths(params)["split"])
    adapter_md5 = workspace_md5(params.paths.train.adapter)
    if adapter_md5 is None:
        raise FileNotFoundError(2, "the adapter is missing", str(params.paths.train.adapter))
    existing = registry.with_adapter(adapter_md5)
    test_md5 = file_md5(params.paths.split.test)
    champion, split_note = champion_on_this_split(params, result, registry, test_md5, answers, judge)
    if existing is not None:  # never a second version of one adapter, never another run's tags rewritten
        version = str(existing.version)
        print(
            f"evaluate: this adapter ({adapter_md5}) is already registered as v{version} "
            f"(MLflow run {existing.run_id}): applying the gate to v{version}"
        )
        if existing.run_id != run_id:
            tracker.set_tags(
                run_id, {"registered_version": f"{version} (already registered from run {existing.run_id})"}
            )
    else:
        tracker.log_metrics(
            run_id,
            {
                f"eval/{name}/{key}": value
                for name in ("adapter", "base", "delta")
                for key, value in overall[name].items()
            },
        )
        tracker.log_metrics(
            run_id, {f"eval/{name}/gen_tokens_per_second": value for name, value in result.throughput.items()}
        )
        version = str(
            registry.register(
                run_id,
                params.paths.train.adapter,
                serving_config(params),
                version_tags(params, result, lineage, verified, adapter_md5),
            ).version
        )
        tracker.set_tags(run_id, {"registered_model": registry.name, "registered_version": version})
    if champion is not None and champion[0] == version:
        champion = None  # re-evaluating the champion itself: judged against the base model
    decision = apply_gate(
        registry, version, overall["adapter"], overall["base"], params.evaluate.gate, champion, split_note
    )
    return version, decision, verified, existing is None, existing.run_id if existing is not None else run_id


def write_report(params: Params, result: Evaluation, run_id: str, version: str, version_run: str, decision) -> None:
    from .report import render

    cfg = params.evaluate
    shown = (
        "question",
        "source",
        "category",
        "reference",
        "base",
        "adapter",
        "base_raw",
        "adapter_raw",
        "judge_verdict",
        "judge_orders",
        "judge_position_flip",
        "judge_reasons",
        "base_rubric",
        "adapter_rubric",
    )
    samples = [{key: row[key] for key in shown if key in row} for row in result.predictions[: cfg.report_samples]]
    origin = (
        f"MLflow run `{run_id}`"
        if version_run == run_id
        else f"registered from MLflow run `{version_run}`; this evaluation in run `{run_id}`"
    )
    header = [
        f"- base model: `{params.model.base}`; adapter: `{params.mlflow.registered_model}` version {version} "
        f"({origin})",
        f"- test rows: {len(result.rows)} (answers generated for {len(result.generated)}); base outputs "
        f"{'from cache' if result.base_from_cache else 'computed in this run'}",
        f"- decoding: {'sampling' if cfg.do_sample else 'greedy'}, max {cfg.max_new_tokens} new tokens; "
        f"answers generated by {result.engine}",
        f"- gate ({cfg.gate.metric}, min delta {cfg.gate.min_delta}, Korean-only ≥ {cfg.gate.min_korean_only}): "
        f"{'PASSED → champion' if decision.passed else 'not passed'} — {decision.reason}",
    ]
    if cfg.consistency.samples:
        header.append(
            f"- consistency: {cfg.consistency.samples} sampled answers per row (temperature "
            f"{cfg.temperature}, top_k {cfg.top_k}, top_p {cfg.top_p}), mean pairwise ROUGE-L"
        )
    text = render(
        "Evaluation: base vs adapter",
        result.overall,
        result.by_group,
        samples,
        header,
        sanity_floor=cfg.gate.min_korean_only,
    )
    with atomic_open(params.paths.evaluate.report) as out:
        out.write(text)


def log_outputs(params: Params, result: Evaluation, run_id: str, lock: Path = Path("dvc.lock")) -> None:
    from ..registry.traces import log_eval_traces
    from ..registry.tracking import Tracker
    from .trace_rows import trace_rows

    paths = params.paths.evaluate
    tracker = Tracker(params.mlflow)
    tracker.log_artifact(run_id, paths.report, "eval")
    tracker.log_artifact(run_id, paths.details, "eval")
    tracker.log_table(run_id, result.predictions, "eval/predictions.json")
    if lock.exists():
        tracker.log_artifact(run_id, lock, "lineage")
    judged = result.overall.get("judge", {})
    tracker.log_metrics(run_id, {f"eval/judge/{key}": value for key, value in judged.items()})  # numbers only
    log_eval_traces(params.mlflow, run_id, trace_rows(result.predictions, judged.get("model")))


def headline(result: Evaluation, engine: str, splits) -> dict:
    """The DVC metrics: the figures `dvc exp show` compares, nothing that changes from run to
    run with the same params and data, nothing that names a particular MLflow store, nothing
    that depends on the registry (the gate's decision is in the report and on the version)."""
    rows = {name: sum(1 for _ in read_jsonl(getattr(splits, name))) for name in ("train", "val", "test")}
    figures = {
        name: {key: result.overall[name][key] for key in HEADLINE if key in result.overall[name]}
        for name in ("adapter", "base", "delta")
    }
    judge = {key: value for key, value in result.overall.get("judge", {}).items() if isinstance(value, (int, float))}
    return {**figures, **({"judge": judge} if judge else {}), "engine": engine, "rows": rows}


def run_evaluate(params: Params, check_inputs=lambda: None) -> dict:
    """`check_inputs` raises when params or inputs changed while evaluating (then nothing is
    registered and DVC locks nothing)."""
    from ..modeling import load_adapter_model, load_tokenizer
    from ..registry.tracking import Tracker
    from .judge import Judge, judge_evaluation

    rows = list(read_jsonl(params.paths.split.test))
    if not rows:
        raise ValueError(f"{params.paths.split.test}: the test split is empty")
    run_info = params.paths.train.run_info
    run_id = json.loads(run_info.read_text(encoding="utf-8"))["run_id"]
    Tracker(params.mlflow).check_writable(run_id, str(run_info))  # before a minute of model work
    judge = Judge.from_params(params)  # None when disabled; a bad judge setup fails here, not after generating
    limit = params.evaluate.max_generate_rows
    generated = rows[:limit] if limit else rows
    tokenizer = load_tokenizer(params.model.base)
    model = load_adapter_model(params.model, params.paths.train.adapter)
    with answering(params, model, tokenizer) as answers:  # with vllm: the engine runs until registered
        runs, cached = run_models(params, model, tokenizer, answers, rows, generated)
        result = score(params, rows, generated, runs, cached)
        result.engine = answers.description
        judge_evaluation(judge, result)  # the LLM judge, before any output is written
        check_inputs()
        write_tables(params, result)
        version, decision, verified, new, version_run = register(params, result, run_id, answers, judge=judge)
    Tracker(params.mlflow).set_tags(run_id, {"eval.engine": result.engine})
    write_report(params, result, run_id, version, version_run, decision)
    metrics = headline(result, params.evaluate.engine, params.paths.split)
    write_json(params.paths.evaluate.metrics, metrics)
    if new:
        log_outputs(params, result, run_id)

    a, d = result.overall["adapter"], result.overall["delta"]
    print(
        f"evaluate: adapter ROUGE-L {a.get('rougeL_f1')} ({d.get('rougeL_f1', 0):+}), chrF {a.get('chrf')} "
        f"({d.get('chrf', 0):+}), loss {a['eval_loss']} ({d['eval_loss']:+}), Korean-only "
        f"{a.get('korean_only_share')}; {'registered' if new else 'already registered as'} v{version} "
        f"(lineage verified: {verified}); gate {'passed: champion' if decision.passed else 'not passed'}: "
        f"{decision.reason}"
    )
    return metrics


def main(params: Params, args=None) -> None:
    from ..runtime import keep_freed_memory

    keep_freed_memory()
    run_evaluate(params, args.check_inputs)
