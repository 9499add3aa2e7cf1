"""Training throughput: this pipeline's configuration against the original notebook's,
on the same rows in the same run. Prints a Markdown table.

    .venv/bin/python benchmarks/train_throughput.py            # CPU, tiny-qwen3
    .venv/bin/python benchmarks/train_throughput.py --rows 96 --steps 6

Each configuration runs in its own process (so peak memory is its own) for the same
number of optimizer steps over the same M&A sample rows (8 rows a step in both):
- notebook: batch 1 x 8 accumulation, every row padded to 384 tokens, no packing;
- pipeline: batch 4 x 2 accumulation, dynamic padding (the train stage's defaults).
tokens/s counts real (non-padding) tokens only.
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
    "pipeline (4x2, dynamic padding)": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                                        "pad_to_multiple_of": None},
}


def run_one(name: str, rows: int, steps: int, out: Path) -> None:
    sys.path.insert(0, str(REPO / "src"))
    from mna_tune.runtime import keep_freed_memory

    keep_freed_memory()
    import tempfile

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mna_tune.chat import build_messages, training_pair
    from mna_tune.modeling import build_qwen3_tokenizer, load_base_model, lora_config

    records = json.loads((REPO / "data/sample/mna_qa.json").read_text(encoding="utf-8"))[:rows]
    pairs = [training_pair(build_messages(r["question"], r["answer"])) for r in records]
    tokenizer = build_qwen3_tokenizer()
    real_tokens_per_row = [len(tokenizer(p["prompt"] + p["completion"]).input_ids) for p in pairs]
    config = CONFIGS[name]
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(output_dir=scratch, max_steps=steps, learning_rate=1e-4, max_length=384, report_to="none",
                         save_strategy="no", logging_steps=steps, bf16=False, completion_only_loss=True,
                         seed=42, data_seed=42, disable_tqdm=True, **config)
        trainer = SFTTrainer(model=load_base_model("tiny-qwen3"), args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(pairs), peft_config=lora_config(8, 32, 0.1, [
                                 "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    samples = steps * config["per_device_train_batch_size"] * config["gradient_accumulation_steps"]
    # rows are visited in a shuffled order; the mean real length times the samples seen is exact enough
    real_tokens = samples * sum(real_tokens_per_row) / len(real_tokens_per_row)
    out.write_text(json.dumps({"seconds": seconds, "samples": samples, "tokens": real_tokens,
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
          f"steps of 8 rows from data/sample/mna_qa.json\n")
    print("| configuration | wall s | samples/s | real tokens/s | peak RSS MiB | tokens/s vs notebook |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['samples'] / r['seconds']:.2f} | {r['tokens'] / r['seconds']:.0f} | "
              f"{r['peak_rss_mib']:.0f} | {(r['tokens'] / r['seconds']) / (baseline['tokens'] / baseline['seconds']):.2f}x |")


if __name__ == "__main__":
    main()
