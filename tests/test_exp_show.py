"""The README's `dvc exp show` command reads at 120 columns.

DVC renders the table itself, from the metrics layout the stages write (`headline` and
`train_metrics`, the real functions), the real params.yaml and the params and metrics that
dvc.yaml's train and evaluate stages declare. Only the figures are made up: the embedded
random model moves none of ROUGE-L, chrF or the Korean share, so the end-to-end test cannot
show a realistic comparison; here every figure moves with the learning rate, as with a real
model. (tests/test_e2e_dvc.py runs the same command on the real pipeline.)
"""

import subprocess
import sys

import pytest
import yaml

from helpers import REPO, cli_env, readme_command

pytestmark = pytest.mark.slow

# One stage script for both stages: the stages' own metric writers, made-up figures.
STAGE = """
import sys
from types import SimpleNamespace as NS

from mna_tune.evaluation.evaluate import headline
from mna_tune.params import load_params
from mna_tune.training.train import train_metrics
from mna_tune.workspace import write_json, write_jsonl

params = load_params("params.yaml")
moved = params.train.learning_rate * 100  # every figure moves with the variant
if sys.argv[1] == "train":
    trainer = NS(state=NS(log_history=[{"loss": 1.9}, {"eval_loss": 1.2 - moved}]), args=NS(world_size=1),
                 model=NS(parameters=lambda: []))
    result = NS(training_loss=1.1 - moved, global_step=245, metrics={})
    write_json(params.paths.train.metrics, train_metrics(trainer, result, {}, 1.0)[0])
    write_json(params.paths.train.run_info, {"learning_rate": params.train.learning_rate})
else:
    for split in ("train", "val", "test"):
        write_jsonl(getattr(params.paths.split, split), [{"messages": []}] * 3)
    def figures(shift):
        return {"rougeL_f1": round(0.213457 + shift, 6), "chrf": round(0.312345 + shift, 6),
                "eval_loss": round(1.234567 - shift, 6), "korean_only_share": round(0.941176 + shift / 10, 6)}
    adapter, base = figures(moved), figures(0)
    overall = {"adapter": adapter, "base": base, "delta": {k: round(adapter[k] - base[k], 6) for k in adapter}}
    certificate = {path: {"status": "agrees", "equal": 20, "of": 20} for path in ("export", "serve", "pyfunc")}
    result = NS(overall=overall, parity=certificate)  # a certificate that holds: its columns do not change
    write_json(params.paths.evaluate.metrics, headline(result, "vllm", params.paths.split))
"""


def run(root, *args, **env):
    done = subprocess.run(list(args), cwd=root, env=cli_env(root, **env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def pipeline_like(root):
    """A DVC repository whose train and evaluate stages read the real params and write the real
    metrics layout, in a few seconds."""
    real = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    # train's run file stands for its outputs: evaluate reads it, so it reruns after train
    stages = {
        name: {
            "cmd": f"{sys.executable} stage.py {name}",
            "deps": ["stage.py", *deps],
            "params": real[name]["params"],
            **({"outs": outs} if outs else {}),
            "metrics": real[name]["metrics"],
        }
        for name, deps, outs in (
            ("train", [], ["${paths.train.run_info}"]),
            ("evaluate", ["${paths.train.run_info}"], []),
        )
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False), encoding="utf-8")
    (root / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    (root / "stage.py").write_text(STAGE, encoding="utf-8")
    (root / ".gitignore").write_text("data/\n", encoding="utf-8")  # the stand-in splits
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run(root, "git", "init", "-q")
    run(root, "dvc", "init", "-q")
    run(root, "dvc", "repro", "-q")
    run(root, "git", "add", "-A")
    run(root, *git, "commit", "-qm", "baseline")


def test_the_readme_comparison_of_two_learning_rates_fits_120_columns(tmp_path):
    pipeline_like(tmp_path)
    for rate in ("3.0e-4", "5.0e-4"):  # DVC names them (adjective-noun, always 10 characters)
        run(tmp_path, "dvc", "exp", "run", "-q", "-S", f"train.learning_rate={rate}")
        run(tmp_path, "git", "checkout", "params.yaml")  # back to the baseline (docs/experiments.md)

    table = run(tmp_path, *readme_command("dvc exp show"), "--no-pager", COLUMNS="120")
    lines = table.splitlines()
    header = next(line for line in lines if "Experiment" in line).split()
    # every figure that moved and the param that changed, whole: nothing folded into `…`
    assert header == [
        "Experiment",
        "val_loss",
        "rougeL_f1",
        "chrf",
        "eval_loss",
        "korean_only_share",
        "train.learning_rate",
    ], table
    assert "…" not in table and max(len(line.rstrip()) for line in lines) <= 120, table
    assert sum("0.0005" in line for line in lines) == 1 and sum("0.0003" in line for line in lines) == 1, table
