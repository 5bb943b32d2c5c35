"""Scorer registry: how an answer is judged right.

Three kinds: ``text`` scorers compare a generated answer with a reference (numeric, exact,
contains — defined with the built-in tasks); ``choice`` picks the option with the highest
log-likelihood under the model (no generation); ``code`` runs the generated program against the
problem's tests in a sandbox and reports pass@k. Adding a text scorer is one function plus one
line in ``tunelab.tasks.base.SCORERS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.evaluate.generation import Prompt, render_prompts
from tunelab.tasks.base import SCORERS as TEXT_SCORERS


@dataclass(frozen=True)
class Scorer:
    """A named scoring rule; ``text`` is set for text scorers only."""

    name: str
    kind: str  # "text" | "choice" | "code"
    description: str
    text: Callable[[str, str], float] | None = None


_TEXT_DESCRIPTIONS = {
    "numeric": "the last number in the answer equals the reference number",
    "exact": "answer equals reference (case, spacing and a trailing period ignored)",
    "contains": "the reference occurs in the answer (normalized)",
}

SCORERS: dict[str, Scorer] = {
    **{name: Scorer(name, "text", _TEXT_DESCRIPTIONS.get(name, name), fn) for name, fn in TEXT_SCORERS.items()},
    "choice": Scorer("choice", "choice", "multiple choice: the option the model gives the highest log-likelihood"),
    "code": Scorer("code", "code", "pass@k: the program passes the problem's tests in a sandboxed subprocess"),
}


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name``; a one-line error lists the known ones."""
    try:
        return SCORERS[name]
    except KeyError:
        raise TunelabError(f"unknown scorer '{name}'; known scorers: {', '.join(SCORERS)}") from None


@torch.inference_mode()
def choice_loglikelihoods(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    choices: Sequence[Sequence[str]],
    *,
    chat: bool = True,
    batch_size: int = 16,
    bf16: bool = False,
) -> list[list[float]]:
    """Sum of log p(option tokens | prompt) for every option of every prompt.

    The prompt is rendered as a chat turn with the generation prompt, so an option is scored
    as the assistant's answer. Context and option are tokenized separately and concatenated
    (as lm-evaluation-harness does), so the option's tokens never merge with the template's.
    """
    if len(prompts) != len(choices):
        raise TunelabError(f"{len(prompts)} prompts but {len(choices)} choice lists")
    contexts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in render_prompts(tokenizer, prompts, chat)]
    pairs = [(i, j, contexts[i], tokenizer(c, add_special_tokens=False)["input_ids"])
             for i, options in enumerate(choices) for j, c in enumerate(options)]
    if any(not cont for *_, cont in pairs):
        raise TunelabError("an option is empty after tokenization")
    scores: list[list[float]] = [[0.0] * len(options) for options in choices]
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][2]) + len(pairs[k][3]))
    with autocast:
        for start in range(0, len(order), batch_size):
            batch = [pairs[k] for k in order[start : start + batch_size]]
            width = max(len(ctx) + len(cont) for *_, ctx, cont in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (*_, ctx, cont) in enumerate(batch):
                seq = ctx + cont
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), dim=-1)
            for row, (i, j, ctx, cont) in enumerate(batch):
                # Logits at position t predict token t + 1.
                positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
                target = torch.tensor(cont)
                scores[i][j] = logprobs[row, positions, target].sum().item()
    return scores


def pick_choice(loglikelihoods: Sequence[float], options: Sequence[str], normalize: bool = False) -> int:
    """Index of the best option; ``normalize`` divides by the option's length in characters (acc_norm)."""
    if normalize:
        return max(range(len(options)), key=lambda j: loglikelihoods[j] / max(len(options[j]), 1))
    return max(range(len(options)), key=lambda j: loglikelihoods[j])
