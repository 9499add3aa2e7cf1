"""Training throughput: this pipeline's configurations against the original notebook's,
on the same rows in the same run. Prints a Markdown table.

    .venv/bin/python benchmarks/train_throughput.py            # CPU, tiny-qwen3
    .venv/bin/python benchmarks/train_throughput.py --rows 96 --steps 6

Each configuration runs in its own process (so peak memory is its own) for the same
number of optimizer steps over the same M&A sample rows, through the train stage's own
trainer (mna_tune.training.trainer.build_trainer):
- notebook: batch 1 x 8 accumulation, every row padded to 384 tokens, no packing;
- pipeline: batch 4 x 2 accumulation, dynamic padding (the train stage's defaults);
- pipeline + packing: 1 x 8 packed sequences of up to 384 tokens (train.packing: true).
Rows and tokens are counted as they reach the model; tokens/s counts real (non-padding) tokens.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "notebook (1x8, padded to 384)": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8,
                                      "pad_to_multiple_of": 384},
    "pipeline (4x2, dynamic padding)": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
    "pipeline + packing (1x8 packs of 384)": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8,
                                              "packing": True},
}


def run_one(name: str, rows: int, steps: int, out: Path) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from mna_tune.runtime import keep_freed_memory

    keep_freed_memory()
    import tempfile

    from mna_tune.chat import build_messages, training_pair
    from mna_tune.modeling import load_base_model
    from mna_tune.params import load_params
    from mna_tune.qwen_tokenizer import build_qwen3_tokenizer
    from mna_tune.training.trainer import build_trainer

    records = json.loads((REPO / "data/sample/mna_qa.json").read_text(encoding="utf-8"))[:rows]
    pairs = [training_pair(build_messages(r["question"], r["answer"])) for r in records]
    config = dict(CONFIGS[name])
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={"train": params.train.model_copy(update={
        "max_steps": steps, "learning_rate": 1e-4, "max_length": 384, "save_steps": 10_000, "logging_steps": steps,
        "packing": config.pop("packing", False)})})
    seen = {"rows": 0, "tokens": 0, "padded": 0}
    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(params, load_base_model(params.model), build_qwen3_tokenizer(), pairs, [],
                                Path(scratch), 384, save_strategy="no", disable_tqdm=True, **config)
        collate = trainer.data_collator

        def counting(examples):  # what really reaches the model
            batch = collate(examples)
            for example in examples:
                lengths = example.get("seq_lengths") or [len(example["input_ids"])]
                seen["rows"] += len(lengths)
                seen["tokens"] += sum(lengths)
            seen["padded"] += batch["input_ids"].numel()
            return batch

        trainer.data_collator = counting
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    out.write_text(json.dumps({"seconds": seconds, "samples": seen["rows"], "tokens": seen["tokens"],
                               "padded": seen["padded"],
                               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        run_one(args.only, args.rows, args.steps, args.out)
        return
    import tempfile

    results = {}
    for name in CONFIGS:
        with tempfile.NamedTemporaryFile(suffix=".json") as handle:
            subprocess.run([sys.executable, __file__, "--only", name, "--rows", str(args.rows), "--steps",
                            str(args.steps), "--out", handle.name], check=True, capture_output=True)
            results[name] = json.loads(Path(handle.name).read_text())
    baseline = results[next(iter(CONFIGS))]
    print(f"tiny-qwen3 LoRA r=8 on CPU ({platform.processor() or platform.machine()}), {args.steps} optimizer "
          f"steps over the first {args.rows} rows of data/sample/mna_qa.json\n")
    print("| configuration | wall s | rows | samples/s | real tokens/s | padding share | peak RSS MiB "
          "| tokens/s vs notebook |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base_rate = baseline["tokens"] / baseline["seconds"]
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        print(f"| {name} | {r['seconds']:.1f} | {r['samples']} | {r['samples'] / r['seconds']:.2f} | {rate:.0f} | "
              f"{1 - r['tokens'] / r['padded']:.0%} | {r['peak_rss_mib']:.0f} | {rate / base_rate:.2f}x |")


if __name__ == "__main__":
    main()
