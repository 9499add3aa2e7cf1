"""GPU training throughput of the train stage's own trainer on a Qwen3-8B-shaped model with
random weights (no hub access on the GPU box either). Prints a Markdown table.

    .venv/bin/python benchmarks/train_throughput_cuda.py --max-seconds 540
    .venv/bin/python benchmarks/train_throughput_cuda.py --shape tiny --max-seconds 120   # CPU dry run of the script

Configurations (each in its own process, so peak memory is its own):
- bf16-lora:  bf16 weights, LoRA r=8 on every projection;
- qlora-4bit: the same model loaded through model.quantization: 4bit (nf4, double quant, bf16 compute).
Both use the pipeline's training path (mna_tune.training.trainer.build_trainer) with packing, over the
M&A sample rows repeated. The random model is written once to --workdir and loaded by
mna_tune.modeling.load_base_model, exactly as a local model folder would be.

MFU = tokens/s x FLOPs per token / peak bf16 FLOP/s of the card. FLOPs per token:
"6N" is the usual dense-training count (N = parameters outside the input embedding, plus
the causal attention term 6 x layers x hidden x mean row length); "LoRA 4N" leaves out the
frozen weights' gradient matmuls, which LoRA training never computes. Recomputation from
gradient checkpointing is not counted (model FLOPs, not hardware FLOPs).
--max-seconds bounds the whole script so one device call holds it; a configuration that no
longer fits is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # Qwen3-8B's architecture; tiny only checks this script on a CPU
    "qwen3-8b": dict(
        hidden_size=4096,
        num_hidden_layers=36,
        intermediate_size=12288,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
    ),
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    ),
}
CONFIGS = {"bf16-lora": "none", "qlora-4bit": "4bit"}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
SETUP_ALLOWANCE_S = 150  # model load (and quantisation) before the timed steps start


def write_random_model(shape: str, folder: Path) -> None:
    """A Qwen3 model of the given shape with random bf16 weights, plus the Qwen3 tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from mna_tune.qwen_tokenizer import QWEN3_VOCAB_SIZE, build_qwen3_tokenizer

    if (folder / "config.json").is_file():
        return
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        **SHAPES[shape],
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: an fp32 8B model would need 32 GB first
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(str(folder))
    build_qwen3_tokenizer().save_pretrained(str(folder))
    del model


def flops_per_token(config, mean_row_tokens: float) -> tuple[float, float]:
    """(dense 6N, LoRA 4N) model FLOPs per trained token, attention included."""
    h, layers = config.hidden_size, config.num_hidden_layers
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size
    n = layers * per_layer + h * config.vocab_size  # + lm_head; the input embedding is a lookup
    attention = 6 * layers * q * mean_row_tokens  # causal: QK^T and AV over half the row on average, fwd+bwd
    return 6 * n + attention, 4 * n + attention * 2 / 3


def peak_flops(override: float | None) -> tuple[float, str]:
    import torch

    if override:
        return override * 1e12, f"{override} TFLOP/s (given)"
    if not torch.cuda.is_available():
        return 1e12, "1 TFLOP/s (placeholder peak for a CPU dry run: MFU not meaningful)"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{tflops} TFLOP/s dense bf16 ({name})"
    raise SystemExit(f"unknown peak bf16 FLOP/s for {name}: pass --peak-tflops")


def run_one(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "src"))
    import torch
    from transformers import TrainerCallback

    from mna_tune.chat import build_messages, training_pair
    from mna_tune.modeling import load_base_model, load_tokenizer
    from mna_tune.params import load_params
    from mna_tune.runtime import keep_freed_memory
    from mna_tune.training.trainer import build_trainer

    keep_freed_memory()
    started = time.perf_counter()
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(
        update={
            "model": params.model.model_copy(
                update={
                    "base": str(args.workdir),
                    "quantization": CONFIGS[args.only],
                    "dtype": "bfloat16" if torch.cuda.is_available() else "float32",
                }
            ),
            "lora": params.lora.model_copy(update={"r": 8, "alpha": 16, "dropout": 0.0}),
            "train": params.train.model_copy(
                update={
                    "per_device_train_batch_size": args.batch,
                    "gradient_accumulation_steps": 1,
                    "max_steps": 10_000,
                    "packing": True,
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "learning_rate": 1e-4,
                    "save_steps": 10_000,
                    "logging_steps": 10_000,
                    "warmup_ratio": 0.0,
                }
            ),
        }
    )
    rows = json.loads((REPO / "data/sample/mna_qa.json").read_text(encoding="utf-8"))
    records = [training_pair(build_messages(r["question"], r["answer"])) for r in rows] * 20  # the trainer cycles them
    tokenizer = load_tokenizer(params.model.base)
    model = load_base_model(params.model, for_training=True)
    seen = {"rows": 0, "tokens": 0}

    class Meter(TrainerCallback):
        """Times steps after the warm-up and stops when this configuration's time is up."""

        def __init__(self):
            self.mark = None

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_step_end(self, _args, state, control, **_):
            self._sync()
            now = time.perf_counter()
            if state.global_step == args.warmup_steps:
                self.mark = (now, dict(seen), state.global_step)
            elif self.mark and now - self.mark[0] >= args.measure_seconds:
                control.should_training_stop = True
            self.last = (now, dict(seen), state.global_step)

    with tempfile.TemporaryDirectory() as scratch:
        trainer = build_trainer(
            params,
            model,
            tokenizer,
            records,
            [],
            Path(scratch),
            args.max_length,
            callbacks=[meter := Meter()],
            save_strategy="no",
            disable_tqdm=True,
        )
        collate = trainer.data_collator

        def counting(examples):  # rows and tokens that really reach the model
            for example in examples:
                lengths = example.get("seq_lengths") or [len(example["input_ids"])]
                seen["rows"] += len(lengths)
                seen["tokens"] += sum(lengths)
            return collate(examples)

        trainer.data_collator = counting
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    (t0, seen0, step0), (t1, seen1, step1) = meter.mark, meter.last
    seconds = t1 - t0
    tokens, samples = seen1["tokens"] - seen0["tokens"], seen1["rows"] - seen0["rows"]
    dense, lora = flops_per_token(model.config, seen1["tokens"] / max(seen1["rows"], 1))
    peak, peak_note = peak_flops(args.peak_tflops)
    args.out.write_text(
        json.dumps(
            {
                "steps": step1 - step0,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "samples_per_s": samples / seconds,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                "mfu_6n": tokens / seconds * dense / peak,
                "mfu_lora": tokens / seconds * lora / peak,
                "peak": peak_note,
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "setup_s": t0 - started,
                "mean_row_tokens": seen1["tokens"] / max(seen1["rows"], 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="qwen3-8b")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--max-seconds", type=float, default=540, help="budget for the whole script")
    parser.add_argument("--measure-seconds", type=float, default=60, help="timed training per configuration")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="packed sequences per step")
    parser.add_argument("--max-length", type=int, default=2048, help="tokens per packed sequence")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--peak-tflops", type=float, help="override the card's dense bf16 peak")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "qwen3-8b-shaped-random")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        run_one(args)
        return
    deadline = time.monotonic() + args.max_seconds
    sys.path.insert(0, str(REPO / "src"))
    args.workdir = args.workdir.with_name(f"{args.workdir.name}-{args.shape}")
    write_random_model(args.shape, args.workdir)
    results = {}
    for name in args.configs.split(","):
        left = deadline - time.monotonic()
        if left < SETUP_ALLOWANCE_S + args.measure_seconds:
            results[name] = f"skipped: {left:.0f}s left of --max-seconds"
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as handle:
            command = [
                sys.executable,
                __file__,
                "--only",
                name,
                "--out",
                handle.name,
                "--shape",
                args.shape,
                "--workdir",
                str(args.workdir),
                "--batch",
                str(args.batch),
                "--max-length",
                str(args.max_length),
                "--measure-seconds",
                str(args.measure_seconds),
                "--warmup-steps",
                str(args.warmup_steps),
                "--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing",
            ] + (["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=left)
            except subprocess.TimeoutExpired:
                results[name] = "stopped: --max-seconds reached"
                continue
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
                results[name] = f"failed: {tail[0][:160]}"
                continue
            results[name] = json.loads(Path(handle.name).read_text())
    first = next((r for r in results.values() if isinstance(r, dict)), None)
    print(
        f"Qwen3 {args.shape}-shaped random model, packing {args.batch} x {args.max_length} tokens, LoRA r=8 on "
        f"all projections, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
        f"{first['device'] if first else '?'}; peak {first['peak'] if first else '?'}\n"
    )
    print("| configuration | timed steps | tokens/s | samples/s | peak GPU GiB | MFU (6N) | MFU (LoRA 4N) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if isinstance(r, str):
            print(f"| {name} | {r} | | | | | |")
            continue
        memory = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "n/a"
        print(
            f"| {name} | {r['steps']} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.1f} | {memory} | "
            f"{r['mfu_6n']:.1%} | {r['mfu_lora']:.1%} |"
        )


if __name__ == "__main__":
    main()
