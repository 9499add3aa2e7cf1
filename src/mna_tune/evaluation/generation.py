"""Model passes used by evaluation: answer-only loss per row and batched generation."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..chat import answer_of, render_completion, render_prompt


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    batch_size: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def generate_kwargs(self) -> dict:
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                  "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:  # silence the model's own sampling defaults (Qwen3 ships temperature 0.6)
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def answer_only_losses(model, tokenizer, rows: list[dict], batch_size: int) -> list[tuple[float, int]]:
    """Per row: (summed cross-entropy over the answer tokens and <|im_end|>, token count).
    The prompt is masked exactly as in training."""
    import torch

    results: list[tuple[float, int]] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
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
    return results


def generate(model, tokenizer, prompts: list[str], settings: GenerationSettings) -> tuple[list[str], int, float]:
    """Raw generated texts (special tokens removed, think tags kept), new-token count, seconds."""
    import torch

    texts, new_tokens, started = [], 0, time.perf_counter()
    for start in range(0, len(prompts), settings.batch_size):
        # left padding: decoder-only models continue from the right edge (asked per call,
        # so the shared tokenizer is left as it was)
        encoded = tokenizer(prompts[start:start + settings.batch_size], return_tensors="pt", padding=True,
                            padding_side="left", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            output = model.generate(**encoded, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id)
        generated = output[:, encoded["input_ids"].shape[1]:]
        finished = (generated != tokenizer.pad_token_id) & (generated != tokenizer.eos_token_id)
        new_tokens += int(finished.sum())
        texts.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
    return texts, new_tokens, time.perf_counter() - started
