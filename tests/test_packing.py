"""Packing and padding-free batches keep every row to itself: the loss of a packed batch
is exactly the token-weighted loss of its rows run one by one, and the learned tokens are
the same answer spans. Batches come from the train stage's own trainer (build_trainer),
and its compute_loss gives the same sum."""

import pytest
import torch

from helpers import QA, chat_rows, tiny_params

LONGER = [(q * 3, a * 4) for q, a in QA]  # rows of different lengths, so packs mix sizes


def trainer_for(tmp_path, qwen3_tokenizer, **train):
    from mna_tune.chat import training_pair
    from mna_tune.modeling import load_base_model
    from mna_tune.training.trainer import build_trainer

    params = tiny_params(per_device_train_batch_size=8, **train)
    records = [training_pair(row["messages"]) for row in chat_rows(QA + LONGER)]
    trainer = build_trainer(
        params, load_base_model(params.model), qwen3_tokenizer, records, [], tmp_path / "out", max_length=256
    )
    trainer.model.eval()  # no dropout: the comparison is exact up to float rounding
    return trainer


def token_losses(model, batch) -> torch.Tensor:
    """Next-token cross-entropy of every learned label, in order."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    return losses[labels != -100]


def summed_loss(model, batch) -> tuple[float, int]:
    losses = token_losses(model, batch)
    return float(losses.sum()), int(losses.numel())


def learned_spans(labels: torch.Tensor) -> list[tuple[int, ...]]:
    spans, current = [], []
    for label in labels.flatten().tolist() + [-100]:
        if label == -100:
            if current:
                spans.append(tuple(current))
            current = []
        else:
            current.append(label)
    return sorted(spans)


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory, qwen3_tokenizer):
    """Each row alone through the padded collator: per-row loss sums and answer spans."""
    trainer = trainer_for(tmp_path_factory.mktemp("rows"), qwen3_tokenizer)
    total, count, spans = 0.0, 0, []
    for example in trainer.train_dataset:
        batch = trainer.data_collator([example])
        loss, n = summed_loss(trainer.model, batch)
        total, count, spans = total + loss, count + n, spans + learned_spans(batch["labels"])
    return total, count, sorted(spans)


@pytest.mark.parametrize("mode", [{"packing": True}, {"padding_free": True}], ids=["packing", "padding-free"])
def test_packed_batches_keep_rows_apart(tmp_path, qwen3_tokenizer, one_by_one, mode):
    trainer = trainer_for(tmp_path, qwen3_tokenizer, **mode)
    batches = list(trainer.get_train_dataloader())
    assert all("attention_mask" not in b and b["input_ids"].shape[0] == 1 for b in batches)  # no padding at all
    if mode.get("packing"):
        assert len(trainer.train_dataset) < 8  # rows really share sequences
    total, count, spans = 0.0, 0, []
    for batch in batches:
        loss, n = summed_loss(trainer.model, batch)
        total, count, spans = total + loss, count + n, spans + learned_spans(batch["labels"])
    expected_total, expected_count, expected_spans = one_by_one
    assert count == expected_count and sorted(spans) == expected_spans  # the same answer tokens, no more
    assert total == pytest.approx(expected_total, rel=1e-4)
    with torch.no_grad():  # the loss training really computes (the kept-token head), as a sum
        trained = sum(
            float(trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=torch.tensor(1))) for b in batches
        )
    assert trained == pytest.approx(expected_total, rel=1e-4)

    # The check can fail: let the rows of one batch attend to each other and the losses move.
    crossed = dict(batches[0])
    crossed["position_ids"] = torch.arange(crossed["input_ids"].shape[1])[None]
    assert (token_losses(trainer.model, crossed) - token_losses(trainer.model, batches[0])).abs().max() > 1e-2


def test_packing_trains_through_the_stage(workspace, monkeypatch):
    import json

    from mna_tune.training import train

    built = []

    def recording(*args, **kwargs):
        built.append(train_build(*args, **kwargs))
        return built[-1]

    train_build = train.build_trainer
    monkeypatch.setattr(train, "build_trainer", recording)
    metrics = train.run_train(tiny_params(packing=True, max_steps=2))
    assert built[0].args.packing and "seq_lengths" in built[0].train_dataset.column_names  # rows really packed
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0
    assert json.loads((workspace / "metrics/train.json").read_text())["steps"] == 2
