"""Training throughput: this pipeline's configurations against the original notebook's and
against plain TRL, on the same rows, in one run. Prints Markdown tables.

    .venv/bin/python benchmarks/train_throughput.py            # CPU, tiny-qwen3, 2 repeats
    .venv/bin/python benchmarks/train_throughput.py --rows 96 --steps 6 --repeats 2
    .venv/bin/python benchmarks/train_throughput.py --profile "pipeline (4x2, dynamic padding)"

Each configuration runs in its own process (so peak memory is its own) for the same
number of optimizer steps over the first --rows M&A sample rows; the configurations
take turns, once per repeat:
- notebook: batch 1 x 8 accumulation, every row padded to 384 tokens, no packing, through
  the train stage's trainer (mna_tune.training.trainer.build_trainer);
- plain TRL: `SFTTrainer(model, args=SFTConfig(...), train_dataset=<messages>,
  peft_config=<the same LoRA>)` with TRL's defaults (batch 8 x 1, dynamic padding, loss on
  every token of a messages dataset, gradient checkpointing on), except bf16 off (this
  machine's float32, as the pipeline uses) and no reporting integrations;
- plain TRL + malloc: the same, after mna_tune.runtime.keep_freed_memory() (glibc keeps
  freed heap memory; every other configuration runs with it, as the train stage does);
- pipeline: batch 4 x 2 accumulation, dynamic padding (the train stage's defaults);
- pipeline + packing: the same with train.packing: true (4 x 2 packs of up to 384 tokens,
  each micro-batch one padding-free sequence).

Rows and tokens are counted in the Trainer's training_step, so only the micro-batches the
optimizer steps consume count (a batch the data loader prepares ahead and never trains is
not counted). Real tokens are non-padding tokens; trained tokens are the labels the loss
is taken on (the Trainer's num_items_in_batch).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAIN = "plain TRL (defaults: 8x1, dynamic padding)"
PLAIN_MALLOC = "plain TRL + this project's malloc settings"
PIPELINE = "pipeline (4x2, dynamic padding)"
PACKING = "pipeline + packing (4x2 packs of 384)"
NOTEBOOK = "notebook (1x8, padded to 384)"
CONFIGS = {
    NOTEBOOK: {
        "train": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8},
        "overrides": {"pad_to_multiple_of": 384},
    },
    PLAIN: {"plain_trl": True, "malloc": False},
    PLAIN_MALLOC: {"plain_trl": True},
    PIPELINE: {"train": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}},
    PACKING: {"train": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "packing": True}},
}


def plain_trl_trainer(params, rows: list[dict], steps: int, scratch: Path):
    """SFTTrainer as its documentation writes it: a messages dataset and a peft_config."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mna_tune.chat import build_messages
    from mna_tune.modeling import load_base_model, lora_config
    from mna_tune.qwen_tokenizer import build_qwen3_tokenizer

    dataset = Dataset.from_list([{"messages": build_messages(r["question"], r["answer"])} for r in rows])
    args = SFTConfig(
        output_dir=str(scratch), max_steps=steps, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True
    )
    return SFTTrainer(
        model=load_base_model(params.model),
        args=args,
        train_dataset=dataset,
        processing_class=build_qwen3_tokenizer(),
        peft_config=lora_config(params.lora, params.model),
    )


def pipeline_trainer(params, config: dict, rows: list[dict], steps: int, scratch: Path):
    from mna_tune.chat import build_messages, training_pair
    from mna_tune.modeling import load_base_model
    from mna_tune.qwen_tokenizer import build_qwen3_tokenizer
    from mna_tune.training.trainer import build_trainer

    pairs = [training_pair(build_messages(r["question"], r["answer"])) for r in rows]
    params = params.model_copy(
        update={
            "train": params.train.model_copy(
                update={
                    "max_steps": steps,
                    "learning_rate": 1e-4,
                    "max_length": 384,
                    "save_steps": 10_000,
                    "logging_steps": steps,
                    "packing": False,
                    **config.get("train", {}),
                }
            )
        }
    )
    return build_trainer(
        params,
        load_base_model(params.model),
        build_qwen3_tokenizer(),
        pairs,
        [],
        scratch,
        384,
        save_strategy="no",
        disable_tqdm=True,
        **config.get("overrides", {}),
    )


def counting(trainer, seen: dict) -> None:
    """Count what each trained micro-batch holds, as it enters training_step."""
    step = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        ids, labels = inputs["input_ids"], inputs["labels"]
        if "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            seen["rows"] += int((mask.sum(-1) > 0).sum())
            seen["tokens"] += int(mask.sum())
        else:  # padding-free: one flat sequence, each row's positions start at 0
            seen["rows"] += int((inputs["position_ids"] == 0).sum())
            seen["tokens"] += ids.numel()
        seen["trained"] += int((labels[:, 1:] != -100).sum())
        seen["padded"] += ids.numel()
        seen["micro_batches"] += 1
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = training_step


def run_one(name: str, rows: int, steps: int, out: Path | None, profile: bool = False) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    config = CONFIGS[name]
    if config.get("malloc", True):
        from mna_tune.runtime import keep_freed_memory

        keep_freed_memory()
    from mna_tune.params import load_params

    records = json.loads((REPO / "data/sample/mna_qa.json").read_text(encoding="utf-8"))[:rows]
    params = load_params(REPO / "params.yaml")
    seen = {"rows": 0, "tokens": 0, "trained": 0, "padded": 0, "micro_batches": 0}
    with tempfile.TemporaryDirectory() as scratch:
        if config.get("plain_trl"):
            trainer = plain_trl_trainer(params, records, steps, Path(scratch))
        else:
            trainer = pipeline_trainer(params, config, records, steps, Path(scratch))
        counting(trainer, seen)
        if profile:
            return profile_steps(trainer)
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
    report = {
        "seconds": seconds,
        "steps": int(result.global_step),
        **seen,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if out is not None:
        out.write_text(json.dumps(report))
    return report


def profile_steps(trainer) -> dict:
    """torch.profiler over the configured steps: where a step's time goes, by operator."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.train()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return {}


def summary(name: str, runs: list[dict]) -> dict:
    first = runs[0]
    for r in runs[1:]:  # the same batches every repeat
        assert (r["rows"], r["tokens"], r["trained"]) == (first["rows"], first["tokens"], first["trained"]), name
    return {
        "runs": runs,
        "rows": first["rows"],
        "tokens": first["tokens"],
        "trained": first["trained"],
        "padded": first["padded"],
        "steps": first["steps"],
        "rates": [r["tokens"] / r["seconds"] for r in runs],
        "trained_rates": [r["trained"] / r["seconds"] for r in runs],
        # the fastest run: the one least slowed by other work on a shared machine
        "rate": max(r["tokens"] / r["seconds"] for r in runs),
        "trained_rate": max(r["trained"] / r["seconds"] for r in runs),
        "rss": max(r["peak_rss_mib"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--profile",
        metavar="CONFIGURATION",
        choices=list(CONFIGS),
        help="profile one configuration's steps in this process instead",
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        run_one(args.profile, args.rows, args.steps, None, profile=True)
        return
    if args.only:
        run_one(args.only, args.rows, args.steps, args.out)
        return

    runs = {name: [] for name in CONFIGS}
    for _ in range(args.repeats):  # take turns, so a burst of load on the machine hits every configuration
        for name in CONFIGS:
            with tempfile.NamedTemporaryFile(suffix=".json") as handle:
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--only",
                        name,
                        "--rows",
                        str(args.rows),
                        "--steps",
                        str(args.steps),
                        "--out",
                        handle.name,
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode:
                    sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
                runs[name].append(json.loads(Path(handle.name).read_text()))
    results = {name: summary(name, r) for name, r in runs.items()}

    reference = results[PLAIN_MALLOC]
    print(
        f"tiny-qwen3 LoRA r=8 on CPU ({platform.processor() or platform.machine()}), {args.steps} optimizer "
        f"steps over the first {args.rows} rows of data/sample/mna_qa.json, {args.repeats} repeats (run 1 / "
        f"run 2 ...; ratios from each configuration's fastest run, peak RSS from its largest)\n"
    )
    print(
        "| configuration | rows | real tokens | trained tokens | padding share | wall s | real tokens/s "
        "| trained tokens/s | peak RSS MiB | real tokens/s vs plain TRL + malloc |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def each(values, fmt):
        return " / ".join(format(v, fmt) for v in values)

    for name, r in results.items():
        print(
            f"| {name} | {r['rows']} | {r['tokens']:,} | {r['trained']:,} | {1 - r['tokens'] / r['padded']:.0%} "
            f"| {each([x['seconds'] for x in r['runs']], '.1f')} | {each(r['rates'], '.0f')} "
            f"| {each(r['trained_rates'], '.0f')} | {each([x['peak_rss_mib'] for x in r['runs']], '.0f')} "
            f"| {r['rate'] / reference['rate']:.2f}x |"
        )

    pipeline, packing = results[PIPELINE], results[PACKING]
    speedup = pipeline["rate"] / reference["rate"]
    print("\nTargets:")
    print(
        f"- pipeline real tokens/s >= 1.5x plain TRL + malloc: {speedup:.2f}x "
        + ("(met)" if speedup >= 1.5 else f"(missed by {1.5 - speedup:.2f}x)")
    )
    print(
        f"- pipeline peak RSS <= plain TRL + malloc: {pipeline['rss']:.0f} vs {reference['rss']:.0f} MiB "
        + (
            "(met)"
            if pipeline["rss"] <= reference["rss"]
            else f"(missed by {pipeline['rss'] - reference['rss']:.0f} MiB)"
        )
    )
    ratio = packing["rate"] / pipeline["rate"]
    print(
        f"- packing real tokens/s >= pipeline: {ratio:.2f}x "
        + ("(met)" if ratio >= 1 else f"(missed by {1 - ratio:.0%})")
    )


if __name__ == "__main__":
    main()
