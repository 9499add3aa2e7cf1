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
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed
from pathlib import Path

from ..chat import answer_of, question_of, render_prompt, strip_think
from ..params import Params
from ..workspace import (
    atomic_open,
    file_md5,
    project_root,
    read_jsonl,
    write_json,
    write_jsonl,
)
from .generation import GenerationSettings, answer_only_losses, generate
from .scoring import ModelRun, compare, score_rows

PLOTTED = ("rougeL_f1", "chrf", "korean_only_share", "exact_match", "domain_term_recall")
PACKAGE = Path(__file__).parents[1]


@dataclass
class Evaluation:
    """Everything one evaluation produced, before it is written anywhere."""

    rows: list[dict]  # every test row (losses)
    generated: list[dict]  # the rows answers were generated for
    runs: dict[str, ModelRun]  # "adapter", "base"
    base_from_cache: bool
    overall: dict
    by_group: dict
    predictions: list[dict]  # one row per generated test row


def settings_of(params: Params) -> GenerationSettings:
    e = params.evaluate
    return GenerationSettings(e.max_new_tokens, e.batch_size, e.do_sample, e.temperature, e.top_k, e.top_p,
                              e.repetition_penalty)


def base_identity(params: Params) -> dict:
    """What makes the base model's outputs what they are: the model, the code that loads
    it and generates, and the library versions."""
    from ..modeling import resolve_base

    source = resolve_base(params.model.base)
    identity = {"model": params.model.model_dump(mode="json"), "kind": source.kind, "name": source.name,
                "code": {name: file_md5(PACKAGE / name) for name in
                         ("chat.py", "modeling.py", "qwen_tokenizer.py", "evaluation/generation.py")},
                "libraries": {name: installed(name) for name in ("torch", "transformers", "peft")}}
    if source.kind == "folder":
        folder = Path(source.name)
        identity["config_md5"] = file_md5(folder / "config.json")
        identity["weights"] = sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))
    return identity


def base_cache_path(params: Params, test_md5: str, generate_rows: int) -> Path:
    key = json.dumps({"base": base_identity(params), "generation": asdict(settings_of(params)),
                      "test_md5": test_md5, "rows": generate_rows, "seed": params.train.seed}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return project_root() / params.paths.cache / "base_eval" / f"{digest}.json"


def run_model(model, tokenizer, rows: list[dict], generated: list[dict], settings: GenerationSettings) -> ModelRun:
    losses = answer_only_losses(model, tokenizer, rows, settings.batch_size)
    raw, new_tokens, seconds = generate(model, tokenizer, [render_prompt(r["messages"]) for r in generated], settings)
    return ModelRun(losses, raw, new_tokens, seconds)


def run_models(params: Params, rows: list[dict], generated: list[dict]) -> tuple[dict[str, ModelRun], bool]:
    """The adapter, then the same weights with LoRA disabled (the base model), unless the
    base outputs for exactly these rows and settings are cached."""
    from transformers import set_seed

    from ..modeling import load_adapter_model, load_tokenizer

    tokenizer = load_tokenizer(params.model.base)
    model = load_adapter_model(params.model, params.paths.train.adapter)
    settings = settings_of(params)
    set_seed(params.train.seed)
    adapter = run_model(model, tokenizer, rows, generated, settings)
    cache = base_cache_path(params, file_md5(params.paths.split.test), len(generated))
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        base = ModelRun([tuple(x) for x in data["losses"]], data["raw"], data["new_tokens"], data["seconds"])
        return {"adapter": adapter, "base": base}, True
    set_seed(params.train.seed)
    with model.disable_adapter():
        base = run_model(model, tokenizer, rows, generated, settings)
    write_json(cache, asdict(base))
    return {"adapter": adapter, "base": base}, False


def score(params: Params, rows: list[dict], generated: list[dict], runs: dict[str, ModelRun],
          base_from_cache: bool) -> Evaluation:
    from ..lexicon import Lexicon

    references = [answer_of(row["messages"]) for row in generated]
    terms = Lexicon.from_tsv(params.filter.lexicon_path).pattern
    answers = {name: [strip_think(text) for text in run.raw] for name, run in runs.items()}
    scores = {name: score_rows(answers[name], run.raw, references, terms) for name, run in runs.items()}
    overall, by_group = compare(rows, runs, scores, answers, references)
    adapter, base = runs["adapter"], runs["base"]
    predictions = [
        {"id": row["id"], "source": row["source"], "category": row["category"], "question": question_of(row["messages"]),
         "reference": ref, "adapter": answers["adapter"][i], "base": answers["base"][i],
         "adapter_raw": adapter.raw[i], "base_raw": base.raw[i],
         "adapter_rougeL_f1": round(scores["adapter"][i]["rougeL_f1"], 6),
         "base_rougeL_f1": round(scores["base"][i]["rougeL_f1"], 6),
         "adapter_korean_only": scores["adapter"][i]["korean_only"],
         "adapter_loss": round(adapter.losses[i][0] / max(adapter.losses[i][1], 1), 6),
         "base_loss": round(base.losses[i][0] / max(base.losses[i][1], 1), 6)}
        for i, (row, ref) in enumerate(zip(generated, references))
    ]
    return Evaluation(rows, generated, runs, base_from_cache, overall, by_group, predictions)


def write_tables(params: Params, result: Evaluation) -> None:
    paths = params.paths.evaluate
    write_jsonl(paths.predictions, result.predictions)
    write_json(paths.group_metrics, result.by_group)
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
    return {"extract": [str(params.data.aihub_dir)], "filter": raw_filter, "merge": [str(params.data.mna_path)],
            "split": [str(splits.train), str(splits.val), str(splits.test)]}


def register(params: Params, result: Evaluation, run_id: str, lock: Path = Path("dvc.lock")):
    """A new registry version with its lineage and evaluation tags, then the gate.
    Returns (version, gate decision, whether dvc.lock vouches for the evaluated splits)."""
    from ..registry.lineage import lineage_from_lock
    from ..registry.promotion import apply_gate
    from ..registry.registry import Registry
    from ..registry.tracking import Tracker, git_info
    from ..serving.pyfunc import serving_config

    overall = result.overall
    tracker = Tracker(params.mlflow)
    tracker.log_metrics(run_id, {f"eval/{name}/{key}": value for name in ("adapter", "base", "delta")
                                 for key, value in overall[name].items()})
    lineage = lineage_from_lock(lock, lineage_paths(params))
    # The lock must describe the split files evaluated here; a stale lock (a stage run by
    # hand outside DVC) is flagged rather than trusted.
    verified = all(lineage.get(f"lineage.split.{path}") == file_md5(path) for path in lineage_paths(params)["split"])
    eval_tags = {f"eval.{name}.{k}": str(v) for name in ("adapter", "base") for k, v in overall[name].items()}
    registry = Registry(params.mlflow)
    version = registry.register(run_id, params.paths.train.adapter, serving_config(params), {
        **git_info(), **lineage, **eval_tags, "lineage.verified": str(verified).lower(), "mlflow_run_id": run_id,
        "model.base": params.model.base, "eval.test_md5": file_md5(params.paths.split.test),
    }).version
    decision = apply_gate(registry, version, overall["adapter"], overall["base"], params.evaluate.gate)
    tracker.set_tags(run_id, {"registered_model": registry.name, "registered_version": str(version)})
    return version, decision, verified


def write_report(params: Params, result: Evaluation, run_id: str, version: str, decision) -> None:
    from .report import render

    cfg = params.evaluate
    samples = [{key: row[key] for key in ("question", "source", "category", "reference", "base", "adapter")}
               for row in result.predictions[: cfg.report_samples]]
    header = [f"- base model: `{params.model.base}`; adapter: `{params.mlflow.registered_model}` version {version} "
              f"(MLflow run `{run_id}`)",
              f"- test rows: {len(result.rows)} (answers generated for {len(result.generated)}); base outputs "
              f"{'from cache' if result.base_from_cache else 'computed in this run'}",
              f"- decoding: {'sampling' if cfg.do_sample else 'greedy'}, max {cfg.max_new_tokens} new tokens",
              f"- gate ({cfg.gate.metric}, min delta {cfg.gate.min_delta}, Korean-only ≥ {cfg.gate.min_korean_only}): "
              f"{'PASSED → champion' if decision.passed else 'not passed'} — {decision.reason}"]
    text = render("Evaluation: base vs adapter", result.overall, result.by_group, samples, header)
    with atomic_open(params.paths.evaluate.report) as out:
        out.write(text)


def log_outputs(params: Params, result: Evaluation, run_id: str, lock: Path = Path("dvc.lock")) -> None:
    from ..registry.tracking import Tracker

    paths = params.paths.evaluate
    tracker = Tracker(params.mlflow)
    tracker.log_artifact(run_id, paths.report, "eval")
    tracker.log_artifact(run_id, paths.group_metrics, "eval")
    tracker.log_table(run_id, result.predictions, "eval/predictions.json")
    if lock.exists():
        tracker.log_artifact(run_id, lock, "lineage")


def run_evaluate(params: Params) -> dict:
    rows = list(read_jsonl(params.paths.split.test))
    if not rows:
        raise ValueError(f"{params.paths.split.test}: the test split is empty")
    limit = params.evaluate.max_generate_rows
    generated = rows[:limit] if limit else rows
    runs, cached = run_models(params, rows, generated)
    result = score(params, rows, generated, runs, cached)
    write_tables(params, result)

    run_id = json.loads(params.paths.train.run_info.read_text(encoding="utf-8"))["run_id"]
    version, decision, verified = register(params, result, run_id)
    write_report(params, result, run_id, version, decision)
    metrics = {**result.overall, "test_rows": len(rows), "generated_rows": len(generated), "base_from_cache": cached,
               "model_version": int(version), "gate_passed": decision.passed}
    write_json(params.paths.evaluate.metrics, metrics)
    log_outputs(params, result, run_id)

    a, d = result.overall["adapter"], result.overall["delta"]
    print(f"evaluate: adapter ROUGE-L {a.get('rougeL_f1')} ({d.get('rougeL_f1', 0):+}), chrF {a.get('chrf')} "
          f"({d.get('chrf', 0):+}), loss {a['eval_loss']} ({d['eval_loss']:+}), Korean-only "
          f"{a.get('korean_only_share')}; registered v{version} (lineage verified: {verified}); gate "
          f"{'passed: champion' if decision.passed else 'not passed'}: {decision.reason}")
    return metrics


def main(params: Params, args=None) -> None:
    from ..runtime import keep_freed_memory

    keep_freed_memory()
    run_evaluate(params)
