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
from typing import TYPE_CHECKING, Any

from ..chat import answer_of, question_of, strip_think
from ..decoding import SERVING_CONFIG, GenerationSettings, settings_of
from ..params import Params
from ..workspace import (
    atomic_open,
    file_md5,
    project_root,
    read_jsonl,
    write_json,
    write_jsonl,
)
from . import parity
from .answering import ADAPTER, BASE, answering
from .generation import answer_only_losses
from .scoring import ModelRun, add_row_details, compare, score_rows

if TYPE_CHECKING:
    from ..registry.publish import Published

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
    probes: dict | None = None  # the memorisation probe (evaluation/probes.py), when evaluate.probes > 0
    parity: dict | None = None  # the parity certificate (evaluation/parity.py), path -> its check


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


def run_probes(params: Params, answers) -> tuple[list[dict], dict | None]:
    """The probe's training rows and the adapter's greedy answers to them (evaluation/probes.py)."""
    from dataclasses import replace

    from .probes import memorisation, probe_rows

    if not params.evaluate.probes:
        return [], None
    chosen = probe_rows(params.paths.split.train, params.evaluate.probes, params.train.seed)
    greedy = replace(settings_of(params), do_sample=False)
    raw, _, _ = answers.generate(ADAPTER, [row["messages"] for row in chosen], greedy, progress="adapter: probes")
    return chosen, memorisation(chosen, raw)


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
            "memorisation_probe": result.probes,
            "parity": result.parity,
        },
    )
    overall = result.overall
    with atomic_open(paths.scores_plot) as out:
        out.write("metric,base,adapter\n")
        for metric in PLOTTED:
            if metric in overall["adapter"] or metric in overall["base"]:  # a side without a value: blank
                out.write(f"{metric},{overall['base'].get(metric, '')},{overall['adapter'].get(metric, '')}\n")


def evaluate_champion(params: Params, result: Evaluation, version: str, answers, judge=None) -> dict:
    """The champion's adapter on this evaluation's rows, answered by the same engine and scored
    (and judged, with the judge on) like the candidate: its figures on this test split."""
    import tempfile

    from ..modeling import load_adapter_model, load_tokenizer
    from ..params import ModelParams
    from ..registry.registry import Registry
    from .judge import judge_evaluation

    registry = Registry(params.mlflow)
    with tempfile.TemporaryDirectory() as scratch:
        adapter = registry.download_adapter(registry.version(version), Path(scratch))
        config = next(Path(scratch).rglob(SERVING_CONFIG), None)
        model_params = (
            ModelParams(**json.loads(config.read_text(encoding="utf-8"))["model"]) if config else params.model
        )
        model = load_adapter_model(model_params, adapter)
        champion = answers.with_adapter(f"champion-v{version}", adapter, model)
        run = run_model(
            model, load_tokenizer(model_params.base), champion, result.rows, result.generated, settings_of(params)
        )
    other = score(params, result.rows, result.generated, {"adapter": run, "base": result.runs["base"]}, True)
    judge_evaluation(judge, other)
    return other.overall["adapter"]


def headline_tag(result: Evaluation) -> str:
    """The headline figures for the version's page, adapter and delta."""
    figures = ", ".join(
        f"{key} {result.overall['adapter'][key]:.4g} ({result.overall['delta'].get(key, 0):+.4g})"
        for key in HEADLINE
        if key in result.overall["adapter"]
    )
    return f"adapter vs base: {figures}"


def write_report(params: Params, result: Evaluation, run_id: str, published: Published) -> None:
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
        if published.version_run == run_id
        else f"registered from MLflow run `{published.version_run}`; this evaluation in run `{run_id}`"
    )
    decision = published.decision
    header = [
        f"- base model: `{params.model.base}`; adapter: `{params.mlflow.registered_model}` "
        f"version {published.version} ({origin})",
        f"- test rows: {len(result.rows)} (answers generated for {len(result.generated)}); base outputs "
        f"{'from cache' if result.base_from_cache else 'computed in this run'}",
        f"- decoding: {'sampling' if cfg.do_sample else 'greedy'}, max {cfg.max_new_tokens} new tokens; "
        f"answers generated by {result.engine}",
        f"- gate ({cfg.gate.metric}, min delta {cfg.gate.min_delta}, Korean-only ≥ {cfg.gate.min_korean_only}): "
        f"{'PASSED → champion' if decision.passed else 'not passed'} — {decision.reason}",
    ]
    if result.probes:
        probes = result.probes
        header.append(
            f"- memorisation probe: the adapter reproduces {probes['exact']} of {probes['rows']} training answers "
            "exactly (greedy; row ids in reports/eval.json)"
        )
    if result.parity:
        header.append("- parity certificate (the same greedy answers on every path; evaluation/parity.py):")
        for path, check in result.parity.items():
            header.append(f"  - `{path}`: {parity.PathCheck(**check).line()}")
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


def log_outputs(
    params: Params, result: Evaluation, run_id: str, published: Published, lock: Path = Path("dvc.lock")
) -> None:
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
    if result.probes:
        tracker.log_metrics(run_id, {"eval/adapter/probe_exact_share": result.probes["exact_share"]})
    rows = trace_rows(result.predictions, judged.get("model"), published.version)
    log_eval_traces(params.mlflow, run_id, rows, published.model_id)


def headline(result: Evaluation, engine: str, splits) -> dict:
    """The DVC metrics: the figures `dvc exp show` compares, nothing that changes from run to
    run with the same params and data, nothing that names a particular MLflow store, nothing
    that depends on the registry (the gate's decision is in the report and on the version).
    The adapter's figures sit at the top level: their columns are then `rougeL_f1`, not
    `adapter.rougeL_f1`, so a comparison of two variants fits 120 columns (docs/experiments.md);
    the base model's and the difference are nested under `base` and `delta`."""
    rows = {name: sum(1 for _ in read_jsonl(getattr(splits, name))) for name in ("train", "val", "test")}
    adapter, base, delta = (
        {key: result.overall[name][key] for key in HEADLINE if key in result.overall[name]}
        for name in ("adapter", "base", "delta")
    )
    judge = {key: value for key, value in result.overall.get("judge", {}).items() if isinstance(value, (int, float))}
    checked = {
        path: round(check["equal"] / check["of"], 6)
        for path, check in (result.parity or {}).items()
        if check["status"] in ("agrees", "differs") and check["of"]
    }
    return {
        **adapter,
        "base": base,
        "delta": delta,
        **({"parity": checked} if checked else {}),
        **({"judge": judge} if judge else {}),
        "engine": engine,
        "rows": rows,
    }


def run_evaluate(params: Params, check_inputs=lambda: None) -> dict:
    """`check_inputs` raises when params or inputs changed while evaluating (then nothing is
    registered and DVC locks nothing)."""
    from ..modeling import load_adapter_model, load_tokenizer
    from ..registry.publish import comparison, publish
    from ..registry.tracking import Tracker
    from .judge import Judge, judge_evaluation

    rows = list(read_jsonl(params.paths.split.test))
    if not rows:
        raise ValueError(f"{params.paths.split.test}: the test split is empty")
    run_info = params.paths.train.run_info
    run_id = json.loads(run_info.read_text(encoding="utf-8"))["run_id"]
    Tracker(params.mlflow).check_writable(run_id, str(run_info))  # before a minute of model work
    judge = Judge.from_params(params)  # None when disabled; a bad judge setup fails here, not after generating
    compared = comparison(params)  # candidate, base and champion: decided before any model runs
    limit = params.evaluate.max_generate_rows
    generated = rows[:limit] if limit else rows
    tokenizer = load_tokenizer(params.model.base)
    model = load_adapter_model(params.model, params.paths.train.adapter)
    with answering(params, model, tokenizer) as answers:  # with vllm: the engine runs until the champion is done
        runs, cached = run_models(params, model, tokenizer, answers, rows, generated)
        result = score(params, rows, generated, runs, cached)
        probe_rows, result.probes = run_probes(params, answers)
        questions = parity.questions_of(params, probe_rows)  # none: the certificate is off
        replayed = parity.in_process(params, answers, model, tokenizer, questions) if questions else {}
        result.engine = answers.description
        judge_evaluation(judge, result)  # the LLM judge, before any output is written
        champion_metrics = compared.champion_metrics
        if compared.evaluate_champion:
            champion_metrics = evaluate_champion(params, result, str(compared.champion), answers, judge)
    check_inputs()
    del model  # the certificate starts servers and loads the version again: free this copy first

    def certify(registry, version) -> tuple[dict[str, str], str | None]:
        checks = parity.certify(params, registry, version, questions, replayed)
        result.parity = parity.as_dict(checks)
        return {path: check.line() for path, check in checks.items()}, parity.refusal(
            params.evaluate.gate.parity, checks
        )

    published = publish(
        params,
        run_id,
        compared,
        result.overall,
        result.throughput,
        headline_tag(result),
        champion_metrics,
        certify if questions else None,
    )
    write_tables(params, result)
    Tracker(params.mlflow).set_tags(run_id, {"eval.engine": result.engine})
    write_report(params, result, run_id, published)
    metrics = headline(result, params.evaluate.engine, params.paths.split)
    write_json(params.paths.evaluate.metrics, metrics)
    if published.new:
        log_outputs(params, result, run_id, published)

    a, d = result.overall["adapter"], result.overall["delta"]
    decision = published.decision
    print(
        f"evaluate: adapter ROUGE-L {a.get('rougeL_f1')} ({d.get('rougeL_f1', 0):+}), chrF {a.get('chrf')} "
        f"({d.get('chrf', 0):+}), loss {a['eval_loss']} ({d['eval_loss']:+}), Korean-only "
        f"{a.get('korean_only_share')}; {'registered' if published.new else 'already registered as'} "
        f"v{published.version} (lineage verified: {published.verified}); gate "
        f"{'passed: champion' if decision.passed else 'not passed'}: {decision.reason}"
    )
    return metrics


def main(params: Params, args=None) -> None:
    from ..runtime import keep_freed_memory

    keep_freed_memory()
    run_evaluate(params, args.check_inputs)
