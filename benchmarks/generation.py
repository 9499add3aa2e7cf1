"""Evaluate's generation on both engines, on the same rows, in one run: transformers
`generate` (the stage's static batches of evaluate.batch_size) against the vLLM engine
(every row in flight at once, continuous batching), with start-up timed apart. Prints a
Markdown table; --write puts it into docs/benchmarks.md with machine and date.

    .venv/bin/python benchmarks/generation.py                       # CPU: tiny-qwen3, float32
    .venv/bin/python benchmarks/generation.py --rows 64 --max-new-tokens 64 --write
    .venv/bin/python benchmarks/generation.py --shape qwen3-8b --dtype bfloat16 --rows 256  # a GPU

Both engines answer through the code evaluate uses (mna_tune.evaluation.answering): the
base model with a random LoRA adapter (r 8 on all seven projections), greedy, prompts from
the embedded M&A sample cycled to --rows. `qwen3-8b` is a randomly initialised model of
Qwen3-8B's shape (36 layers, hidden 4096, 32/8 heads, head_dim 128): nothing is downloaded.
The table also says how many answers were identical between the engines.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))  # the random Qwen3-8B-shaped model of train_throughput_cuda
MARK_BEGIN, MARK_END = "<!-- generation-benchmark:begin -->", "<!-- generation-benchmark:end -->"


def build(shape: str, dtype: str, folder: Path):
    """A base model folder vLLM loads, the same model in memory for transformers, a random adapter."""
    import torch
    from peft import get_peft_model

    from mna_tune.modeling import load_base_model, load_tokenizer, lora_config
    from mna_tune.params import load_params

    params = load_params(REPO / "params.yaml")
    model_params = params.model.model_copy(update={"dtype": dtype})
    tokenizer = load_tokenizer("tiny-qwen3")
    if shape == "tiny":
        model = load_base_model(model_params)
        model.save_pretrained(folder / "base")
        tokenizer.save_pretrained(folder / "base")
    else:  # the training benchmark's random Qwen3-8B-shaped model (bf16)
        from train_throughput_cuda import write_random_model
        from transformers import AutoModelForCausalLM

        write_random_model(shape, folder / "base")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(folder / "base", dtype=getattr(torch, dtype), device_map=device)
    peft_model = get_peft_model(model, lora_config(params.lora, model_params))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.copy_((torch.randn(weight.shape, generator=generator) * 0.02).to(weight.dtype))
    peft_model.save_pretrained(folder / "adapter")
    return params, peft_model.eval(), tokenizer


def conversations(rows: int) -> list[list[dict]]:
    from mna_tune.chat import build_messages

    questions = [r["question"] for r in json.loads((REPO / "data/sample/mna_qa.json").read_text(encoding="utf-8"))]
    return [build_messages(questions[i % len(questions)]) for i in range(rows)]


def run(args) -> list[dict]:
    from mna_tune.decoding import GenerationSettings
    from mna_tune.engine.client import EngineAnswers
    from mna_tune.engine.process import EngineSpec, running_engine
    from mna_tune.evaluation.answering import ADAPTER, TransformersAnswers, VllmAnswers

    rows = conversations(args.rows)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        started = time.perf_counter()
        params, model, tokenizer = build(args.shape, args.dtype, folder)
        load_s = time.perf_counter() - started
        local, new_local, local_s = TransformersAnswers(model, tokenizer).generate(ADAPTER, rows, settings)
        results = [
            {
                "engine": f"transformers (batches of {args.batch_size})",
                "startup_s": load_s,
                "seconds": local_s,
                "new_tokens": new_local,
            }
        ]
        del model
        spec = EngineSpec(
            model=str(folder / "base"),
            served_name="base",
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            seed=0,
            loras={ADAPTER: str(folder / "adapter")},
            kv_cache_gib=args.kv_cache_gib,
        )
        started = time.perf_counter()
        with running_engine(spec, REPO, folder / "logs") as engine:
            startup_s = time.perf_counter() - started
            served = VllmAnswers(EngineAnswers(engine, tokenizer), tokenizer, params)
            answers, new_served, served_s = served.generate(ADAPTER, rows, settings)
            version = engine.version
    identical = sum(a == b for a, b in zip(local, answers))
    results.append(
        {
            "engine": f"{version} ({args.max_num_seqs} in flight)",
            "startup_s": startup_s,
            "seconds": served_s,
            "new_tokens": new_served,
        }
    )
    for result in results:
        result.update(rows=args.rows, identical=f"{identical}/{args.rows}")
    return results


def table(results: list[dict], args) -> str:
    lines = [
        "| engine | start-up s | generate s | rows/s | new tokens | new tokens/s | identical answers |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['engine']} | {r['startup_s']:.1f} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:.2f} "
            f"| {r['new_tokens']} | {r['new_tokens'] / r['seconds']:.0f} | {r['identical']} |"
        )
    speedup = (results[1]["new_tokens"] / results[1]["seconds"]) / (results[0]["new_tokens"] / results[0]["seconds"])
    lines.append("")
    lines.append(f"vLLM / transformers, new tokens per second after start-up: **{speedup:.2f}x**.")
    return "\n".join(lines)


def machine() -> str:
    import os

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} cores, {device}"


def write(text: str, args) -> None:
    docs = REPO / "docs/benchmarks.md"
    command = "python benchmarks/generation.py " + " ".join(sys.argv[1:])
    block = (
        f"{MARK_BEGIN}\n{machine()}; {date.today().isoformat()}; `{command}`; model {args.shape}, "
        f"{args.dtype}, {args.rows} rows x up to {args.max_new_tokens} new tokens, greedy.\n\n{text}\n{MARK_END}"
    )
    current = docs.read_text(encoding="utf-8")
    if MARK_BEGIN in current:
        before, rest = current.split(MARK_BEGIN, 1)
        current = before + block + rest.split(MARK_END, 1)[1]
    else:
        current = current.rstrip() + "\n\n## Generation: transformers vs vLLM\n\n" + block + "\n"
    docs.write_text(current, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "qwen3-8b"], default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="transformers' static batch (evaluate.batch_size)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="the engine's sequences in flight")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="CPU only")
    parser.add_argument("--write", action="store_true", help="put the table into docs/benchmarks.md")
    args = parser.parse_args()
    text = table(run(args), args)
    print(text)
    if args.write:
        write(text, args)


if __name__ == "__main__":
    main()
