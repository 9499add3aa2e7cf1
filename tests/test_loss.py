"""The kept-token loss (training/loss.py) against the full-logits loss on the same batches
of the train stage's own trainer: the same loss and the same LoRA gradients, for padded,
padding-free and packed batches, with and without the think block in the loss; logits
that never exceed one chunk; a check that fails when the positions are off by one; and
the same gradients under DDP."""

import pytest
import torch

from helpers import QA, chat_rows, tiny_params

LONGER = [(q * 3, a * 4) for q, a in QA]  # rows of different lengths: padding, packs of mixed sizes
# two micro-batches each (8 rows; packing fills 4 packs of up to 256 tokens)
MODES = {
    "padded": {},
    "padding-free": {"padding_free": True},
    "packed": {"packing": True, "per_device_train_batch_size": 2},
}


def trainer_for(tmp_path, tokenizer, think_in_loss=False, **train):
    from mna_tune.chat import training_pair
    from mna_tune.modeling import load_base_model
    from mna_tune.training.trainer import build_trainer

    params = tiny_params(**{"per_device_train_batch_size": 4, **train})
    records = [training_pair(row["messages"], think_in_loss) for row in chat_rows(QA + LONGER)]
    trainer = build_trainer(
        params, load_base_model(params.model), tokenizer, records, [], tmp_path / "out", max_length=256
    )
    trainer.model.eval()  # no dropout: the comparison is exact up to float rounding
    nonzero_lora_b(trainer.model)
    return trainer


def nonzero_lora_b(model):
    """LoRA starts with B = 0, which leaves A without gradient: give B small seeded values
    so both halves of every adapter are compared."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def accumulation_batches(trainer):
    """One optimizer step's micro-batches and the trained-label count the Trainer divides by."""
    batches = list(trainer.get_train_dataloader())[:2]
    return batches, sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)


def full_logits_loss(model, batch, num_items):
    """The loss as the model's own forward computes it: every position's logits, then the
    cross-entropy of the trained labels, summed and divided by the step's label count."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    return (
        torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="sum"
        )
        / num_items
    )


def lora_grads(model):
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def step(trainer, batches, num_items, loss_fn):
    """Losses of the micro-batches of one step, gradients accumulated over them."""
    trainer.model.zero_grad()
    losses = []
    for batch in batches:
        loss = loss_fn(batch)
        loss.backward()
        losses.append(float(loss.detach()))
    return losses, lora_grads(trainer.model)


def kept_token_step(trainer, batches, num_items):
    return step(
        trainer,
        batches,
        num_items,
        lambda b: trainer.compute_loss(trainer.model, dict(b), num_items_in_batch=torch.tensor(num_items)),
    )


def full_logits_step(trainer, batches, num_items):
    return step(trainer, batches, num_items, lambda b: full_logits_loss(trainer.model, b, num_items))


def assert_same_grads(got, expected, rel=1e-4):
    assert got.keys() == expected.keys() and len(got) == 2 * 7 * 2  # A and B of 7 modules in 2 layers
    for name in expected:
        scale = expected[name].abs().max()
        assert scale > 0, name
        assert (got[name] - expected[name]).abs().max() <= rel * scale, name


@pytest.mark.parametrize("think_in_loss", [False, True], ids=["answer", "think-in-loss"])
@pytest.mark.parametrize("mode", MODES, ids=list(MODES))
def test_loss_and_gradients_equal_the_full_logits_path(tmp_path, qwen3_tokenizer, mode, think_in_loss):
    trainer = trainer_for(tmp_path, qwen3_tokenizer, think_in_loss, **MODES[mode])
    assert trainer.kept_token_off is None  # on the CPU the kept-token head runs
    batches, num_items = accumulation_batches(trainer)
    assert len(batches) == 2
    if mode != "padded":
        assert all("attention_mask" not in b and b["input_ids"].shape[0] == 1 for b in batches)
    else:
        assert any((b["attention_mask"] == 0).any() for b in batches)  # real padding in the batch

    calls = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    losses, grads = kept_token_step(trainer, batches, num_items)
    assert not calls  # the LM head module (every position) never ran
    hook.remove()
    expected_losses, expected_grads = full_logits_step(trainer, batches, num_items)

    assert losses == pytest.approx(expected_losses, rel=1e-5)
    assert_same_grads(grads, expected_grads)


def test_loss_and_metrics_equal_trl_compute_loss(tmp_path, qwen3_tokenizer):
    """Against today's SFTTrainer.compute_loss (TRL's fused head, every position scored on
    the CPU), metrics included."""
    trainer = trainer_for(tmp_path, qwen3_tokenizer)
    batches, num_items = accumulation_batches(trainer)
    batches = batches[:1]
    losses, grads = kept_token_step(trainer, batches, num_items)
    metrics = {key: list(values) for key, values in trainer._metrics["eval"].items()}
    trainer._metrics["eval"].clear()
    trainer.kept_token_off = "reference: TRL's own compute_loss"
    expected_losses, expected_grads = kept_token_step(trainer, batches, num_items)
    expected_metrics = trainer._metrics["eval"]

    assert losses == pytest.approx(expected_losses, rel=1e-5)
    assert_same_grads(grads, expected_grads)
    assert metrics["entropy"] == pytest.approx(expected_metrics["entropy"], rel=1e-5)
    assert metrics["mean_token_accuracy"] == expected_metrics["mean_token_accuracy"]


def test_logits_never_exceed_one_chunk(tmp_path, qwen3_tokenizer, monkeypatch):
    """Every projection is at most `rows` positions wide, together they cover the trained
    positions once (backward projects nothing: the gradients were formed in forward), and
    nothing of vocabulary size is kept for backward but the LM head's own weight."""
    from mna_tune.training import loss as loss_module

    trainer = trainer_for(tmp_path, qwen3_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    kept = int((batch["labels"][:, 1:] != -100).sum())
    vocab = trainer.model.get_output_embeddings().weight.shape[0]
    unchunked, _ = kept_token_step(trainer, [batch], kept)

    rows = 16
    monkeypatch.setattr(loss_module, "LOGITS_PER_CHUNK", rows * vocab)
    projected = []
    original = loss_module._project

    def recording(hidden, weight, bias, out):
        projected.append((hidden.shape[0], tuple(out.shape)))
        return original(hidden, weight, bias, out)

    monkeypatch.setattr(loss_module, "_project", recording)
    saved = []

    def pack(tensor):
        saved.append(tensor.shape)
        return tensor

    trainer.model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(kept))
    loss.backward()

    assert float(loss.detach()) == pytest.approx(unchunked[0], rel=1e-6)  # chunking changes nothing
    assert kept > 3 * rows and all(n <= rows and shape == (n, vocab) for n, shape in projected)
    assert sum(n for n, _ in projected) == kept
    weight_shape = trainer.model.get_output_embeddings().weight.shape
    assert not [s for s in saved if vocab in s and s != weight_shape]  # no logits kept for backward

    # The same hook sees the full-logits path keep [batch, seq, vocab] logits: the check can fail
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        full_logits_loss(trainer.model, batch, kept)
    assert [s for s in saved if vocab in s and s != weight_shape]


def test_positions_off_by_one_change_the_loss(tmp_path, qwen3_tokenizer, monkeypatch):
    """The equality above can fail: score each label from the wrong position (one later,
    or the label itself from its own position) and the loss moves far past the tolerance."""
    from mna_tune.training import loss as loss_module

    trainer = trainer_for(tmp_path, qwen3_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    kept = int((batch["labels"][:, 1:] != -100).sum())
    expected = float(full_logits_loss(trainer.model, batch, kept))
    right = float(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(kept)))
    assert right == pytest.approx(expected, rel=1e-5)

    original = loss_module.kept_positions
    for shift in (1, -1):

        def shifted(labels, shift_labels=None, shift=shift):
            mask, targets = original(labels, shift_labels)
            return torch.roll(mask, shift, dims=1), targets

        monkeypatch.setattr(loss_module, "kept_positions", shifted)
        wrong = float(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(kept)))
        assert abs(wrong - expected) > 1e-3 * abs(expected)
    monkeypatch.setattr(loss_module, "kept_positions", original)

    # A label scored from its own position (no shift) is wrong too
    def unshifted(labels, shift_labels=None):
        return original(None, labels[:, :-1])

    monkeypatch.setattr(loss_module, "kept_positions", unshifted)
    wrong = float(trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(kept)))
    assert abs(wrong - expected) > 1e-3 * abs(expected)


def test_a_batch_without_trained_labels_gives_a_zero_loss_that_backpropagates(tmp_path, qwen3_tokenizer):
    trainer = trainer_for(tmp_path, qwen3_tokenizer)
    batch = dict(next(iter(trainer.get_train_dataloader())))
    batch["labels"] = torch.full_like(batch["labels"], -100)
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert float(loss) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in lora_grads(trainer.model).values())


def _ddp_worker(rank, world, port, batches, num_items, out):
    """One DDP rank: its micro-batch through DDP(PEFT(model)) with the kept-token head,
    normalised as the Trainer does across ranks (global label count, times world size).
    Leaves with os._exit: tearing down DDP's gloo reducer can deadlock on the GIL at exit."""
    import datetime
    import os
    import traceback

    import torch.distributed as dist
    from peft import get_peft_model

    from mna_tune.modeling import load_base_model, lora_config
    from mna_tune.training.loss import add_kept_token_head

    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
        params = tiny_params()
        torch.manual_seed(0)
        model = get_peft_model(load_base_model(params.model), lora_config(params.lora, params.model)).eval()
        nonzero_lora_b(model)
        add_kept_token_head(model.get_base_model())
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        outputs = ddp(**batches[rank], kept_token_loss=True)
        loss = -outputs.log_probs.sum() / num_items * world
        loss.backward()  # DDP averages the gradients over the ranks
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters() if p.requires_grad}, out)
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


@pytest.mark.slow
def test_ddp_gradients_equal_one_process(tmp_path, qwen3_tokenizer):
    import time

    import torch.multiprocessing as mp
    from peft import get_peft_model

    from helpers import free_port
    from mna_tune.modeling import load_base_model, lora_config

    trainer = trainer_for(tmp_path, qwen3_tokenizer)
    batches, num_items = accumulation_batches(trainer)
    out = tmp_path / "grads.pt"
    workers = mp.spawn(_ddp_worker, args=(2, free_port(), batches, num_items, str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not workers.join(timeout=5):
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail("the two DDP processes did not finish within 300 s")

    params = tiny_params()
    torch.manual_seed(0)
    model = get_peft_model(load_base_model(params.model), lora_config(params.lora, params.model)).eval()
    nonzero_lora_b(model)
    for batch in batches:  # one process, both micro-batches: gradient accumulation
        full_logits_loss(model, batch, num_items).backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert_same_grads(torch.load(out), expected)


@pytest.mark.parametrize("head_learns", [False, True], ids=["frozen-head", "head-learns"])
def test_chunked_log_probs_equal_autograd_on_full_logits(head_learns):
    """The kernel alone, against autograd through full logits: log-probabilities, entropy,
    top-1 hits and gradients for any upstream gradient (here a different weight per
    position), with a frozen head (gradients formed in forward) and with a head whose
    weight and bias learn (logits recomputed chunk by chunk in backward)."""
    from mna_tune.training.loss import KeptTokenLogProb

    generator = torch.Generator().manual_seed(1)
    n, hidden_size, vocab = 37, 8, 301
    hidden = torch.randn(n, hidden_size, generator=generator, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, generator=generator).requires_grad_(head_learns)
    bias = torch.randn(vocab, generator=generator).requires_grad_(head_learns)
    targets = torch.randint(0, vocab, (n,), generator=generator)
    targets[:5] = (hidden[:5] @ weight.t() + bias).argmax(-1)  # some top-1 hits
    upstream = torch.rand(n, generator=generator)

    log_probs, entropy, is_top1 = KeptTokenLogProb.apply(hidden, weight, bias, targets, 10, torch.float32)
    (log_probs * upstream).sum().backward()
    got = [t.grad.clone() for t in (hidden, weight, bias) if t.requires_grad]
    for t in (hidden, weight, bias):
        t.grad = None

    log_softmax = torch.log_softmax(hidden @ weight.t() + bias, -1)
    expected_log_probs = log_softmax.gather(1, targets[:, None])[:, 0]
    (expected_log_probs * upstream).sum().backward()
    expected = [t.grad for t in (hidden, weight, bias) if t.requires_grad]

    torch.testing.assert_close(log_probs, expected_log_probs.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, -(log_softmax.exp() * log_softmax).sum(-1).detach(), rtol=1e-4, atol=1e-4)
    assert torch.equal(is_top1, log_softmax.argmax(-1) == targets) and is_top1[:5].all()
    assert len(got) == (3 if head_learns else 1)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
