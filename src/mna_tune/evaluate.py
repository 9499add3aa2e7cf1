"""evaluate stage: base model vs adapter on the test split, Korean-aware metrics overall,
per source and per category, a report, and the MLflow registry with the promotion gate.

The base model's outputs are cached (under <repo root>/.cache/base_eval) by base-model
identity, generation settings, chat format and the test split's md5, so experiments that
only change training do not pay for the base model again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .chat import answer_of, question_of, render_prompt, strip_think
from .data.io import file_md5, read_jsonl, write_json, write_jsonl
from .eval_scoring import ModelRun, compare, score_rows
from .generation import GenerationSettings, answer_only_losses, generate
from .gate import GateDecision, decide
from .params import Params
from .workspace import project_root


@dataclass(frozen=True)
class EvaluatePaths:
    test: Path = Path("data/processed/test.jsonl")
    adapter: Path = Path("models/adapter")
    run_info: Path = Path("models/train_run.json")
    metrics: Path = Path("metrics/eval.json")
    group_metrics: Path = Path("metrics/eval_groups.json")
    scores_plot: Path = Path("plots/eval_scores.csv")
    predictions: Path = Path("reports/predictions.jsonl")
    report: Path = Path("reports/eval.md")
    lock: Path = Path("dvc.lock")


def split_files(test_path: Path) -> list[Path]:
    return [test_path.with_name(f"{name}.jsonl") for name in ("train", "val", "test")]


def settings_of(params: Params) -> GenerationSettings:
    e = params.evaluate
    return GenerationSettings(e.max_new_tokens, e.batch_size, e.do_sample, e.temperature, e.top_k, e.top_p,
                              e.repetition_penalty)


def base_identity(params: Params) -> dict:
    """What makes the base model's outputs what they are."""
    from .modeling import resolve_base

    source = resolve_base(params.model.base)
    identity = {"base": source.name, "kind": source.kind, "dtype": params.model.dtype,
                "quantization": params.model.quantization, "attn": params.model.attn_implementation}
    if source.kind == "tiny":
        identity["tiny_seed"] = params.model.tiny_seed
    elif source.kind == "folder":
        folder = Path(source.name)
        identity["config_md5"] = file_md5(folder / "config.json")
        identity["weights"] = sorted((p.name, p.stat().st_size) for p in folder.glob("*.safetensors"))
    return identity


def base_cache_path(params: Params, test_md5: str, generate_rows: int) -> Path:
    chat_md5 = file_md5(Path(__file__).with_name("chat.py"))
    key = json.dumps({"model": base_identity(params), "generation": asdict(settings_of(params)),
                      "test_md5": test_md5, "rows": generate_rows, "chat_md5": chat_md5, "seed": params.train.seed},
                     sort_keys=True)
    return project_root() / ".cache" / "base_eval" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def run_model(model, tokenizer, rows: list[dict], gen_rows: list[dict], settings: GenerationSettings) -> ModelRun:
    losses = answer_only_losses(model, tokenizer, rows, settings.batch_size)
    raw, new_tokens, seconds = generate(model, tokenizer, [render_prompt(r["messages"]) for r in gen_rows], settings)
    return ModelRun(losses, raw, new_tokens, seconds)


def base_run(model, tokenizer, rows, gen_rows, params: Params, cache: Path) -> tuple[ModelRun, bool]:
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        return ModelRun([tuple(x) for x in data["losses"]], data["raw"], data["new_tokens"], data["seconds"]), True
    with model.disable_adapter():  # the same weights without LoRA: the base model
        run = run_model(model, tokenizer, rows, gen_rows, settings_of(params))
    write_json(cache, asdict(run))
    return run, False


def run_evaluate(params: Params, paths: EvaluatePaths = EvaluatePaths()) -> dict:
    from transformers import set_seed

    from .data.scoring import LexiconScorer
    from .modeling import load_adapter_model, load_tokenizer
    from .report import render
    from .serving import serving_config
    from .lineage import lineage_from_lock
    from .tracking import Tracker, git_info

    rows = list(read_jsonl(paths.test))
    if not rows:
        raise ValueError(f"{paths.test}: the test split is empty")
    cfg = params.evaluate
    gen_rows = rows[: cfg.max_generate_rows] if cfg.max_generate_rows else rows
    tokenizer = load_tokenizer(params.model.base)
    m = params.model
    model = load_adapter_model(m.base, paths.adapter, m.tiny_seed, m.dtype, m.quantization, m.attn_implementation)

    set_seed(params.train.seed)
    adapter = run_model(model, tokenizer, rows, gen_rows, settings_of(params))
    set_seed(params.train.seed)
    cache = base_cache_path(params, file_md5(paths.test), len(gen_rows))
    base, cached = base_run(model, tokenizer, rows, gen_rows, params, cache)

    references = [answer_of(row["messages"]) for row in gen_rows]
    terms = LexiconScorer.from_tsv(params.filter.lexicon_path).pattern
    predictions = {name: [strip_think(text) for text in run.raw] for name, run in (("adapter", adapter),
                                                                                   ("base", base))}
    scores = {name: score_rows(predictions[name], run.raw, references, terms)
              for name, run in (("adapter", adapter), ("base", base))}
    overall, by_group = compare(rows, {"adapter": adapter, "base": base}, scores, predictions, references)

    prediction_rows = [
        {"id": row["id"], "source": row["source"], "category": row["category"], "question": question_of(row["messages"]),
         "reference": ref, "adapter": predictions["adapter"][i], "base": predictions["base"][i],
         "adapter_raw": adapter.raw[i], "base_raw": base.raw[i],
         "adapter_rougeL_f1": round(scores["adapter"][i]["rougeL_f1"], 6),
         "base_rougeL_f1": round(scores["base"][i]["rougeL_f1"], 6),
         "adapter_korean_only": scores["adapter"][i]["korean_only"],
         "adapter_loss": round(adapter.losses[i][0] / max(adapter.losses[i][1], 1), 6),
         "base_loss": round(base.losses[i][0] / max(base.losses[i][1], 1), 6)}
        for i, (row, ref) in enumerate(zip(gen_rows, references))
    ]
    write_jsonl(paths.predictions, prediction_rows)
    write_json(paths.group_metrics, by_group)
    paths.scores_plot.parent.mkdir(parents=True, exist_ok=True)
    paths.scores_plot.write_text("metric,base,adapter\n" + "".join(
        f"{m},{overall['base'][m]},{overall['adapter'][m]}\n" for m in ("rougeL_f1", "chrf", "korean_only_share",
                                                                        "exact_match", "domain_term_recall")
        if m in overall["adapter"]), encoding="utf-8")

    # ---- MLflow: metrics, artifacts, a new registry version, the gate ----
    tracker = Tracker(params.mlflow)
    run_id = json.loads(paths.run_info.read_text(encoding="utf-8"))["run_id"]
    for name in ("adapter", "base", "delta"):
        tracker.log_metrics(run_id, {f"eval/{name}/{k}": v for k, v in overall[name].items()})
    lineage = lineage_from_lock(paths.lock, lineage_paths(params, paths.test))
    # The lock must describe the split files evaluated here; a stale lock (a stage run by
    # hand outside DVC) is flagged rather than trusted.
    verified = all(lineage.get(f"lineage.split.{path}") == file_md5(path) for path in split_files(paths.test))
    eval_tags = {f"eval.{name}.{k}": str(v) for name in ("adapter", "base") for k, v in overall[name].items()}
    version = tracker.register_adapter(run_id, paths.adapter, serving_config(params), {
        **git_info(), **lineage, **eval_tags, "lineage.verified": str(verified).lower(), "mlflow_run_id": run_id,
        "model.base": params.model.base, "eval.test_md5": file_md5(paths.test),
    }).version
    decision = apply_gate(tracker, version, overall["adapter"], overall["base"], cfg.gate)
    tracker.set_tags(run_id, {"registered_model": params.mlflow.registered_model, "registered_version": str(version)})

    metrics = {**overall, "test_rows": len(rows), "generated_rows": len(gen_rows), "base_from_cache": cached,
               "model_version": int(version), "gate_passed": decision.passed}
    samples = [{"question": r["question"], "source": r["source"], "category": r["category"],
                "reference": r["reference"], "base": r["base"], "adapter": r["adapter"]}
               for r in prediction_rows[: cfg.report_samples]]
    header = [f"- base model: `{params.model.base}`; adapter: `{params.mlflow.registered_model}` version {version} "
              f"(MLflow run `{run_id}`)",
              f"- test rows: {len(rows)} (answers generated for {len(gen_rows)}); base outputs "
              f"{'from cache' if cached else 'computed in this run'}",
              f"- decoding: {'sampling' if cfg.do_sample else 'greedy'}, max {cfg.max_new_tokens} new tokens",
              f"- gate ({cfg.gate.metric}, min delta {cfg.gate.min_delta}, Korean-only ≥ {cfg.gate.min_korean_only}): "
              f"{'PASSED → champion' if decision.passed else 'not passed'} — {decision.reason}"]
    paths.report.parent.mkdir(parents=True, exist_ok=True)
    paths.report.write_text(render("Evaluation: base vs adapter", overall, by_group, samples, header),
                            encoding="utf-8")
    write_json(paths.metrics, metrics)
    tracker.log_artifact(run_id, paths.report, "eval")
    tracker.log_artifact(run_id, paths.group_metrics, "eval")
    tracker.log_table(run_id, prediction_rows, "eval/predictions.json")
    if paths.lock.exists():
        tracker.log_artifact(run_id, paths.lock, "lineage")

    a, d = overall["adapter"], overall["delta"]
    print(f"evaluate: adapter ROUGE-L {a.get('rougeL_f1')} ({d.get('rougeL_f1', 0):+}), chrF {a.get('chrf')} "
          f"({d.get('chrf', 0):+}), loss {a['eval_loss']} ({d['eval_loss']:+}), Korean-only "
          f"{a.get('korean_only_share')}; registered v{version} (lineage verified: {verified}); gate "
          f"{'passed: champion' if decision.passed else 'not passed'}: {decision.reason}")
    return metrics


def apply_gate(tracker, version: str, candidate: dict, base: dict, gate) -> GateDecision:
    """Every new version becomes `candidate`; `champion` moves to it only if the gate passes.
    The decision and its reason are recorded on the version either way."""

    tracker.set_candidate(version)
    champion = tracker.alias_version(tracker.CHAMPION)
    champion_metrics = None
    if champion is not None:
        champion_metrics = {key.removeprefix("eval.adapter."): float(value) for key, value in champion.tags.items()
                            if key.startswith("eval.adapter.")}
    decision = decide(gate.metric, gate.min_delta, gate.min_korean_only, candidate, champion_metrics, base,
                      champion.version if champion else None)
    if decision.passed:
        tracker.promote(version, decision.reason, "gate")
    else:
        tracker.record_decision(version, False, decision.reason, "gate")
    return decision


def lineage_paths(params: Params, test_path: Path) -> dict[str, list[str]]:
    raw_filter = [str(params.filter.lexicon_path)]
    if params.filter.scorer == "column":
        raw_filter.append(str(params.filter.scores_path))
    return {
        "extract": [str(params.data.aihub_dir)],
        "filter": raw_filter,
        "merge": [str(params.data.mna_path)],
        "split": [str(path) for path in split_files(test_path)],
    }
