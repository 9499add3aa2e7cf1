"""The training loss computed only where it is: the LM head and the cross-entropy run on
the positions whose next-token label is trained, a chunk of positions at a time, so
memory grows with the chunk, never with vocabulary x sequence length.

Only the answer and its <|im_end|> carry loss (and the think block with
chat.think_in_loss): about half of a row's tokens, fewer in a padded batch. The model's
own forward projects every position onto Qwen3's 151,936-entry vocabulary. TRL 1.16's
SFTTrainer.compute_loss runs its fused LM head instead, which scores only the trained
positions, in tiles, with Triton kernels on CUDA and XPU, but every position (prompt and
padding included) through a slower torch fallback elsewhere, the CPU among them. So:

- where TRL's Triton head runs, the trainer keeps TRL's compute_loss as it is;
- elsewhere the backbone runs to hidden states, the hidden states whose shifted label is
  trained are gathered (padded, padding-free and packed batches alike: the labels say
  where) and `KeptTokenLogProb` scores them `chunk_rows(vocab)` positions at a time. It
  forms each position's gradient while the chunk's probabilities are at hand, so
  backward needs no logits (see the class); forward keeps one float32 buffer of
  `chunk x vocab`.

The call goes through the model's own forward (`add_kept_token_head`), so DDP, PEFT and
gradient checkpointing see a normal forward. The loss is the same sum of -log p(label)
over the same tokens, divided by the same `num_items_in_batch` (gradient accumulation)
and multiplied by the same number of processes, as TRL's: equal up to float rounding,
and the entropy and mean_token_accuracy metrics are TRL's, over the same tokens
(tests/test_loss.py compares losses, LoRA gradients and metrics).
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

# Elements of one chunk's float32 logits (128 MiB): 220 positions of Qwen3's vocabulary.
LOGITS_PER_CHUNK = 2**25


def chunk_rows(vocab: int, budget: int | None = None) -> int:
    """Positions per chunk so that one chunk's logits hold at most `budget` elements
    (LOGITS_PER_CHUNK unless given)."""
    return max(1, (budget or LOGITS_PER_CHUNK) // vocab)


def kept_positions(labels: torch.Tensor | None, shift_labels: torch.Tensor | None = None):
    """(mask over the positions whose hidden state predicts a trained label, those labels).
    `labels` are shifted by one (position t predicts label t+1); collators that shift
    already pass `shift_labels`, scored as they are."""
    targets = labels[:, 1:] if shift_labels is None else shift_labels
    mask = targets != -100
    return mask, targets[mask]


def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """One chunk's logits, written into the float32 buffer `out` (the matrix product runs
    in the weight's dtype)."""
    if weight.dtype == torch.float32:
        torch.mm(hidden, weight.t(), out=out)
        if bias is not None:
            out += bias
        return out
    logits = hidden @ weight.t()
    if bias is not None:
        logits += bias
    return out.copy_(logits)


class KeptTokenLogProb(torch.autograd.Function):
    """log p(target) of `hidden @ weight.T (+ bias)` in `dtype`, `rows` positions at a time.
    Also returns, without gradient, the entropy and whether the target is a most likely
    token (ties count as hits: TRL counts only the first maximum, which differs on exact
    float ties alone).

    Per chunk: the logits, their maximum, exp in place, the sum, and one product back
    through the head, e @ W: it gives the expected head row under the softmax, E_p[w], and
    from it both the gradient, d(-log p_t)/dh = E_p[w] - w_t (the same whatever the
    upstream gradient of log p_t, a number per position, so backward only scales it, as
    Liger's fused linear cross-entropy does), and the entropy, log Z - h . E_p[w]. When
    the head's own weight or bias must learn (not with LoRA), backward needs the upstream
    gradient inside the product, so it recomputes each chunk's logits instead
    (checkpointing per chunk).

    Memory: one float32 buffer of `rows x vocab`, reused for every chunk, plus a few
    floats per position; nothing of size positions x vocab, forward or backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows, dtype):
        n, vocab = hidden.shape[0], weight.shape[0]
        w, b = weight.to(dtype), bias.to(dtype) if bias is not None else None
        recompute = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        row_grads = (
            hidden.new_empty(hidden.shape, dtype=torch.float32) if ctx.needs_input_grad[0] and not recompute else None
        )
        log_probs = hidden.new_empty(n, dtype=torch.float32)
        log_z = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32)
        is_top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
        buffer = hidden.new_empty((min(n, rows), vocab), dtype=torch.float32)
        for start in range(0, n, rows):
            end = min(start + rows, n)
            hidden_chunk = hidden[start:end].to(dtype)
            logits = _project(hidden_chunk, w, b, buffer[: end - start])
            top = logits.amax(-1)
            target_logit = logits.gather(1, targets[start:end, None])[:, 0]
            is_top1[start:end] = target_logit >= top
            exps = logits.sub_(top[:, None]).exp_()  # e^(z - max), in place
            sums = exps.sum(-1)
            log_z[start:end] = top + sums.log()
            log_probs[start:end] = target_logit - log_z[start:end]
            expected_w = (exps.to(dtype) @ w).float() / sums[:, None]  # E_p[w], [rows, hidden]
            expected_z = (hidden_chunk.float() * expected_w).sum(-1)  # E_p[z] = h . E_p[w] (+ E_p[b])
            if b is not None:
                expected_z += (exps.to(dtype) @ b).float() / sums
            entropy[start:end] = log_z[start:end] - expected_z
            if row_grads is not None:
                row_grads[start:end] = expected_w - w[targets[start:end]].float()
        del buffer
        if row_grads is not None:
            ctx.save_for_backward(row_grads)
        else:
            ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.rows, ctx.dtype, ctx.hidden_dtype, ctx.recompute = rows, dtype, hidden.dtype, recompute
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_log_probs, _grad_entropy, _grad_top1):
        if grad_log_probs is None or not any(ctx.needs_input_grad[:3]):
            return None, None, None, None, None, None
        if not ctx.recompute:
            (row_grads,) = ctx.saved_tensors
            # log p_t's gradient: -(E_p[w] - w_t), times the upstream gradient of each position
            return (row_grads * -grad_log_probs[:, None].float()).to(ctx.hidden_dtype), None, None, None, None, None
        return KeptTokenLogProb._recomputed_backward(ctx, grad_log_probs)

    @staticmethod
    def _recomputed_backward(ctx, grad_log_probs):
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        dtype, rows, n = ctx.dtype, ctx.rows, hidden.shape[0]
        with maybe_gather_lm_head_ctx(weight, bias):  # DeepSpeed ZeRO-3 releases the head after forward
            grad_hidden = torch.zeros_like(hidden) if needs_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs_bias else None
            w, b = weight.to(dtype), bias.to(dtype) if bias is not None else None
            buffer = hidden.new_empty((min(n, rows), weight.shape[0]), dtype=torch.float32) if n else None
            for start in range(0, n, rows):
                end = min(start + rows, n)
                hidden_chunk = hidden[start:end].to(dtype)
                # d(-log p_t)/dz = softmax(z) - onehot(t), recomputed in place; log p_t's gradient is its negative
                grad = _project(hidden_chunk, w, b, buffer[: end - start]).sub_(log_z[start:end, None]).exp_()
                grad[torch.arange(end - start, device=grad.device), targets[start:end]] -= 1
                scale = -grad_log_probs[start:end, None].float()
                grad = grad.to(dtype)
                if needs_hidden:
                    grad_hidden[start:end] = ((grad @ w).float() * scale).to(hidden.dtype)
                if needs_weight:
                    grad_weight += (grad.t() @ (hidden_chunk.float() * scale).to(dtype)).float()
                if needs_bias:
                    grad_bias += (grad.float() * scale).sum(0)
            del buffer
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if needs_weight else None,
            grad_bias.to(bias.dtype) if needs_bias else None,
            None,
            None,
            None,
        )


@dataclass
class KeptTokenOutput(ModelOutput):
    """Per kept position (the trained labels, in batch order): log p(label), entropy and
    top-1 hit; `label_mask` marks where they sit among the shifted positions."""

    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None


def kept_token_log_probs(
    hidden_states: torch.Tensor,
    lm_head: torch.nn.Module,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None = None,
    rows: int | None = None,
) -> KeptTokenOutput:
    """Score the trained positions of `hidden_states` [batch, seq, hidden] (the backbone's
    last hidden state) through `lm_head`, never all positions at once."""
    from torch.distributed.tensor import DTensor
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    if labels is None and shift_labels is None:
        raise ValueError("kept_token_loss needs the batch's labels")
    if shift_labels is None:
        hidden_states = hidden_states[:, :-1]
    weight, bias = lm_head.weight, lm_head.bias
    if isinstance(weight, DTensor):  # FSDP2 shards the head: gather it once, as TRL's fused head does
        weight = weight.full_tensor()
        bias = bias.full_tensor() if bias is not None else None
    mask, targets = kept_positions(
        labels.to(weight.device) if labels is not None else None,
        shift_labels.to(weight.device) if shift_labels is not None else None,
    )
    kept = hidden_states.to(weight.device)[mask]
    device = kept.device.type
    # the head's matrix products run in the autocast dtype (as lm_head(...) would), else in the weight's
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    with torch.autocast(device, enabled=False), maybe_gather_lm_head_ctx(weight, bias):
        log_probs, entropy, is_top1 = KeptTokenLogProb.apply(
            kept, weight, bias, targets, rows or chunk_rows(weight.shape[0]), dtype
        )
    return KeptTokenOutput(log_probs, entropy, is_top1, mask)


def supports_kept_token_head(config) -> str | None:
    """Why the kept-token head cannot stand in for the model's own (None when it can):
    it assumes logits are exactly lm_head(hidden), as in Qwen3."""
    text = config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text, name, None) not in (None, 1, 1.0):
            return f"the model scales its logits ({name})"
    return None


def triton_scores_kept_tokens(device: torch.device) -> bool:
    """TRL 1.16's fused LM head already projects only the trained positions, in tiles, with
    its Triton kernels on CUDA and XPU; it projects every position elsewhere (the CPU)."""
    try:
        from trl.kernels.chunked_logprob import _use_triton
    except ImportError:
        return False
    return bool(_use_triton(torch.device(device)))


def add_kept_token_head(model) -> None:
    """Patch `model.forward` (the causal LM under any PEFT wrapper) so that
    `model(..., labels=..., kept_token_loss=True)` returns a KeptTokenOutput instead of
    logits. The call still goes through every wrapper (DDP, PEFT), so gradient
    synchronisation and adapters behave as in a normal forward. Without the flag the
    forward is the previous one (TRL's fused head, generation)."""
    previous = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, kept_token_loss=False, labels=None, shift_labels=None, **kwargs):
        if not kept_token_loss:
            if labels is not None:
                kwargs["labels"] = labels
            if shift_labels is not None:
                kwargs["shift_labels"] = shift_labels
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        kwargs.pop("num_items_in_batch", None)
        # Looked up on every call: FSDP and PEFT replace modules after patching
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        return kept_token_log_probs(hidden, self.get_output_embeddings(), labels, shift_labels)

    model.forward = types.MethodType(forward, model)


@functools.cache
def kept_token_trainer_class():
    """TRL's SFTTrainer with `compute_loss` on the kept-token head (imported on demand: TRL
    is slow to import). Everything else (data, collators, metrics' names, checkpoints) is
    SFTTrainer's own."""
    import accelerate
    from accelerate.utils import is_peft_model
    from packaging.version import Version
    from trl import SFTTrainer

    class KeptTokenSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.kept_token_off = self._kept_token_unsupported()
            if self.kept_token_off is None:
                add_kept_token_head(self.model.get_base_model() if is_peft_model(self.model) else self.model)

        def _kept_token_unsupported(self) -> str | None:
            """Why TRL's own compute_loss must run instead (None: the kept-token head runs)."""
            parallelism = self.accelerator.parallelism_config
            if triton_scores_kept_tokens(self.args.device):
                return "TRL's fused LM head scores only the trained positions on this device (Triton)"
            if self.compute_loss_func is not None:
                return "compute_loss_func"
            if self.label_smoother is not None or self.args.loss_type != "nll":
                return "label smoothing or a loss_type other than nll"
            if self.aux_loss_enabled:
                return "mixture-of-experts router loss"
            if (
                Version(accelerate.__version__) >= Version("1.12.0")
                and parallelism is not None
                and parallelism.sp_enabled
                and parallelism.sp_backend == "deepspeed"
            ):
                return "DeepSpeed sequence parallelism reduces the model's own loss"
            return supports_kept_token_head(self.model.config)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # return_outputs wants logits (compute_metrics): TRL recomputes them; so do we
            if self.kept_token_off is not None or return_outputs:
                return super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            outputs = model(**inputs, kept_token_loss=True)
            # From here on the same arithmetic as SFTTrainer.compute_loss (TRL 1.16), so the
            # loss, its normalisation over gradient accumulation and ranks, and the logged
            # metrics mean what they meant: only the positions scored differ.
            num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())

            gather = self.accelerator.gather_for_metrics
            num_valid = gather(outputs.label_mask.sum()).sum()
            entropy_sum = gather(outputs.entropy.detach().sum()).sum()
            num_correct = gather(outputs.is_top1.sum()).sum()
            self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append(
                (num_correct / num_valid).item() if num_valid > 0 else 0.0
            )
            if mode == "train":
                if "attention_mask" in inputs:
                    local = inputs["attention_mask"].sum()
                elif "position_ids" in inputs:
                    local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                else:
                    raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
                self._total_train_tokens += gather(local).sum().item() // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return KeptTokenSFTTrainer
