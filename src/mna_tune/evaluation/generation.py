"""Model passes: answer-only loss per row (evaluation) and batched generation (evaluation,
`ask`, the pyfunc model). Prompts are token ids from `chat.prompt_ids`, as in the server."""

from __future__ import annotations

import time
from dataclasses import replace

from ..chat import answer_of, prompt_ids, render_completion, render_prompt
from ..decoding import GenerationSettings


def _progress(total: int, desc: str | None):
    """A progress bar over rows (rows done, rate, ETA) on stderr; none when desc is None."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row", disable=desc is None)


def answer_only_losses(
    model, tokenizer, rows: list[dict], batch_size: int, progress: str | None = None
) -> list[tuple[float, int]]:
    """Per row: (summed cross-entropy over the answer tokens and <|im_end|>, token count).
    The prompt is masked exactly as in training."""
    import torch

    results: list[tuple[float, int]] = []
    pad = tokenizer.pad_token_id
    bar = _progress(len(rows), progress)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        seqs, labels = [], []
        for row in batch:
            prompt = tokenizer(render_prompt(row["messages"]), add_special_tokens=False).input_ids
            answer = tokenizer(render_completion(answer_of(row["messages"])), add_special_tokens=False).input_ids
            seqs.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(len(seq) for seq in seqs)
        input_ids = torch.tensor([seq + [pad] * (width - len(seq)) for seq in seqs], device=model.device)
        attention = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq in seqs], device=model.device)
        targets = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
        shifted = targets[:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), shifted.reshape(-1), ignore_index=-100, reduction="none"
        ).view(shifted.shape)
        for row_loss, row_targets in zip(per_token, shifted):
            counted = row_targets != -100
            results.append((float(row_loss[counted].sum()), int(counted.sum())))
        bar.update(len(batch))
    bar.close()
    return results


def left_padded(conversations: list[list[dict]], tokenizer, device, enable_thinking: bool = False):
    """input_ids and attention_mask for a batch of conversations, padded on the left
    (decoder-only models continue from the right edge). Prompts are encoded by
    chat.prompt_ids, so text in a message can never become a control token."""
    import torch

    seqs = [prompt_ids(tokenizer, messages, enable_thinking) for messages in conversations]
    width = max(len(seq) for seq in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(seq)) + seq for seq in seqs], device=device)
    attention = torch.tensor([[0] * (width - len(seq)) + [1] * len(seq) for seq in seqs], device=device)
    return input_ids, attention


def generate(
    model, tokenizer, conversations: list[list[dict]], settings: GenerationSettings, progress: str | None = None
) -> tuple[list[str], int, float]:
    """Answers for chat conversations (message lists, rendered as chat.prompt_ids does):
    raw generated texts (special tokens removed, think tags kept), new-token count, seconds."""
    import torch

    texts, new_tokens, started = [], 0, time.perf_counter()
    bar = _progress(len(conversations), progress)
    for start in range(0, len(conversations), settings.batch_size):
        input_ids, attention = left_padded(conversations[start : start + settings.batch_size], tokenizer, model.device)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                **settings.generate_kwargs(),
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        generated = output[:, input_ids.shape[1] :]
        finished = (generated != tokenizer.pad_token_id) & (generated != tokenizer.eos_token_id)
        new_tokens += int(finished.sum())
        texts.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
        bar.update(len(generated))
    bar.close()
    return texts, new_tokens, time.perf_counter() - started


def sample_answers(
    model,
    tokenizer,
    conversations: list[list[dict]],
    settings: GenerationSettings,
    samples: int,
    seed: int,
    progress: str | None = None,
) -> list[list[str]]:
    """Per conversation, `samples` raw answers drawn with sampling on (the settings'
    temperature, top_k, top_p); pass s is seeded with seed + 1 + s, the same seeds for every
    model. [] when samples is 0."""
    from transformers import set_seed

    if samples == 0:
        return []
    sampled = replace(settings, do_sample=True)
    passes = []
    for number in range(samples):
        set_seed(seed + 1 + number)
        texts, _, _ = generate(
            model, tokenizer, conversations, sampled, None if progress is None else f"{progress} {number + 1}/{samples}"
        )
        passes.append(texts)
    return [list(answers) for answers in zip(*passes)]
