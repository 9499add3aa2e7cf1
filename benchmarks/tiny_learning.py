"""How well the embedded default learns: trains tiny-qwen3 with LoRA on the repository's
splits (data/processed, from `dvc repro`) under variants of shape, initialisation and
training values, evaluates each with the evaluate stage's own code, and prints a table:
training seconds, answer loss on the test split (adapter and base), ROUGE-L, chrF, the
Korean-only share of the generated answers and the gate's verdict.

    .venv/bin/python benchmarks/tiny_learning.py                      # the shipped default
    .venv/bin/python benchmarks/tiny_learning.py --epochs 1 2 3 4 6     # loss against training time
    .venv/bin/python benchmarks/tiny_learning.py --hidden 64 --std 0.02 --random-embeddings   # the old default

Each variant runs in a scratch folder (its own MLflow store); nothing in the repository changes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def variant(args, epochs: float | None) -> dict:
    import torch

    import mna_tune.modeling as modeling
    from mna_tune.evaluation.evaluate import run_evaluate
    from mna_tune.params import ParityParams, load_params
    from mna_tune.training.train import run_train

    shipped = modeling.tiny_qwen3_config

    def config():
        base = shipped()
        for key, value in (
            ("hidden_size", args.hidden),
            ("intermediate_size", args.intermediate),
            ("num_hidden_layers", args.layers),
            ("initializer_range", args.std),
            ("tie_word_embeddings", args.tied),
        ):
            if value is not None:
                setattr(base, key, value)
        return base

    modeling.tiny_qwen3_config = config
    if args.random_embeddings:  # every row drawn at random, as before the embeddings came from the tokens' text
        modeling.tiny_embeddings = lambda config, seed: (
            torch.randn(config.vocab_size, config.hidden_size) * config.initializer_range
        )
    params = load_params(REPO / "params.yaml")
    updates = {
        "lora": {k: v for k, v in (("r", args.r), ("alpha", args.alpha)) if v is not None},
        "train": {
            k: v
            for k, v in (
                ("learning_rate", args.lr),
                ("num_train_epochs", epochs),
                ("per_device_train_batch_size", args.batch),
                ("gradient_accumulation_steps", args.accumulation),
                ("lr_scheduler_type", args.scheduler),
                ("warmup_ratio", args.warmup),
                ("max_grad_norm", args.grad_norm),
            )
            if v is not None
        },
        # the learning figures only: no memorisation probe, no parity certificate (docs/evaluation.md)
        "evaluate": {"max_generate_rows": args.generate_rows, "probes": 0, "parity": ParityParams(test_rows=0)},
    }
    params = params.model_copy(
        update={name: getattr(params, name).model_copy(update=values) for name, values in updates.items()}
    )
    with tempfile.TemporaryDirectory(prefix="tiny-learning-") as scratch:
        root = Path(scratch)
        for folder in ("data/processed", "data/lexicon", "prompts"):
            shutil.copytree(REPO / folder, root / folder)
        os.chdir(root)
        os.environ["DVC_ROOT"] = str(root)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        started = time.perf_counter()
        trained = run_train(params) or {}
        seconds = time.perf_counter() - started
        evaluated = run_evaluate(params)
    return {"train_s": seconds, "steps": trained.get("steps"), **evaluated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--intermediate", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--std", type=float, help="initializer_range of the random weights")
    parser.add_argument("--tied", type=lambda s: s.lower() == "true", help="tie_word_embeddings: true or false")
    parser.add_argument("--r", type=int)
    parser.add_argument("--alpha", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--epochs", type=float, nargs="*", default=[None], help="one row per value")
    parser.add_argument("--random-embeddings", action="store_true", help="embedding rows drawn at random")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--accumulation", type=int)
    parser.add_argument("--scheduler")
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--grad-norm", type=float)
    parser.add_argument("--generate-rows", type=int, default=None)
    args = parser.parse_args()
    rows = []
    for epochs in args.epochs:
        result = variant(args, epochs)
        base = result["base"]
        rows.append(
            f"| {epochs or 'default'} | {result['steps']} | {result['train_s']:.0f} | {result['eval_loss']:.3f} | "
            f"{base['eval_loss']:.3f} | {result['eval_loss'] / base['eval_loss']:.2f} | {result['rougeL_f1']:.4f} | "
            f"{result['chrf']:.2f} | {result['korean_only_share']:.2f} |"
        )
    print("| epochs | steps | train s | answer loss | base | ratio | ROUGE-L | chrF | Korean-only |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
