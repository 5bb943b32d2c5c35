"""Scorer registry: how an answer is judged right.

Three kinds: ``text`` scorers compare a generated answer with a reference (numeric, exact,
contains — defined with the built-in tasks); ``choice`` picks the option with the highest
log-likelihood under the model (no generation); ``code`` runs the generated program against the
problem's tests in a sandbox and reports pass@k. Adding a text scorer is one function plus one
line in ``tunelab.tasks.base.SCORERS``; this module's ``SCORERS`` registry holds every kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.evaluate.generation import Prompt, render_prompts
from tunelab.registry import Registry
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

SCORERS: Registry[Scorer] = Registry("scorer", listing="known scorers: ")
for _name, _fn in TEXT_SCORERS.items():
    SCORERS.register(_name, Scorer(_name, "text", _TEXT_DESCRIPTIONS.get(_name, _name), _fn))
del _name, _fn
SCORERS.register("choice", Scorer("choice", "choice", "multiple choice: the option the model gives the highest log-likelihood"))
SCORERS.register("code", Scorer("code", "code", "pass@k: the program passes the problem's tests in a sandboxed subprocess"))


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name``; a one-line error lists the known ones."""
    return SCORERS.get(name)


# One scored sequence: (prompt index, option index, context token ids, option token ids).
ChoicePair = tuple[int, int, list[int], list[int]]
# forward(pair indices, input_ids, attention_mask, keep) -> logits at the positions ``keep``
# (pass it to the model as ``logits_to_keep``): wraps the model call of one batch (e.g. with hooks
# that depend on which sequences are in it).
BatchForward = Callable[[list[int], torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def choice_pairs(tokenizer: Any, prompts: Sequence[Prompt], choices: Sequence[Sequence[str]],
                 chat: bool = True, option_prompts: Sequence[Sequence[Prompt] | None] | None = None) -> list[ChoicePair]:
    """Every (prompt, option) as token ids, context and option tokenized separately.

    Separate tokenization (as lm-evaluation-harness does) keeps the option's tokens from merging
    with the template's. ``option_prompts[i]``, when given, holds one context per option of prompt
    ``i`` (WinoGrande fills the blank differently for each option) and replaces ``prompts[i]``.
    """
    if len(prompts) != len(choices):
        raise TunelabError(f"{len(prompts)} prompts but {len(choices)} choice lists")
    per_option = list(option_prompts) if option_prompts is not None else [None] * len(prompts)
    if len(per_option) != len(prompts) or any(o is not None and len(o) != len(c) for o, c in zip(per_option, choices)):
        raise TunelabError("option_prompts needs one context per option of every prompt")

    def ids(prompt: Prompt) -> list[int]:
        return tokenizer(render_prompts(tokenizer, [prompt], chat)[0], add_special_tokens=False)["input_ids"]

    contexts = [[ids(p)] * len(c) if o is None else [ids(x) for x in o] for p, c, o in zip(prompts, choices, per_option)]
    pairs = [(i, j, contexts[i][j], tokenizer(c, add_special_tokens=False)["input_ids"])
             for i, options in enumerate(choices) for j, c in enumerate(options)]
    if any(not cont for *_, cont in pairs):
        raise TunelabError("an option is empty after tokenization")
    return pairs


def choice_batches(pairs: Sequence[ChoicePair], batch_size: int) -> list[list[int]]:
    """Pair indices in batches of similar length (sorted by total length, so padding stays small)."""
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][2]) + len(pairs[k][3]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def pad_pairs(pairs: Sequence[ChoicePair], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` of context + option for each pair."""
    width = max(len(ctx) + len(cont) for *_, ctx, cont in pairs)
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (*_, ctx, cont) in enumerate(pairs):
        seq = ctx + cont
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


@torch.inference_mode()
def pair_loglikelihoods(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[ChoicePair],
    *,
    batch_size: int = 16,
    bf16: bool = False,
    forward: BatchForward | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[float]:
    """Sum of log p(option tokens | context) for each pair, in ``pairs`` order.

    Batches come from :func:`choice_batches`; ``forward`` replaces the plain model call of a
    batch, ``on_batch(n_pairs)`` is called after each one (progress).
    """
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    scores = [0.0] * len(pairs)
    with autocast:
        for batch in choice_batches(pairs, batch_size):
            ids, mask = pad_pairs([pairs[k] for k in batch], pad)
            ids, mask = ids.to(device), mask.to(device)
            # Logits only where an option is predicted: the full vocabulary at every position of a
            # long few-shot batch takes tens of GiB (5-shot MMLU at batch 32: > 24 GiB).
            start = min(len(pairs[k][2]) for k in batch) - 1
            keep = torch.arange(start, max(len(pairs[k][2]) + len(pairs[k][3]) for k in batch) - 1, device=device)
            logits = (forward(batch, ids, mask, keep) if forward
                      else model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, k in enumerate(batch):
                _, _, ctx, cont = pairs[k]
                # Logits at position t predict token t + 1 (column t − start of the kept ones).
                positions = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1) - start
                target = torch.tensor(cont)
                scores[k] = logprobs[row, positions, target].sum().item()
            if on_batch:
                on_batch(len(batch))
    return scores


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
    option_prompts: Sequence[Sequence[Prompt] | None] | None = None,
) -> list[list[float]]:
    """Sum of log p(option tokens | prompt) for every option of every prompt (``option_prompts``:
    see :func:`choice_pairs`).

    The prompt is rendered as a chat turn with the generation prompt, so an option is scored
    as the assistant's answer. Context and option are tokenized separately and concatenated
    (as lm-evaluation-harness does), so the option's tokens never merge with the template's.
    """
    pairs = choice_pairs(tokenizer, prompts, choices, chat, option_prompts)
    flat = pair_loglikelihoods(model, tokenizer, pairs, batch_size=batch_size, bf16=bf16)
    return nest_pair_scores(pairs, flat, choices)


def nest_pair_scores(pairs: Sequence[ChoicePair], flat: Sequence[float],
                     choices: Sequence[Sequence[str]]) -> list[list[float]]:
    """Per-pair scores regrouped as ``scores[prompt][option]``."""
    scores: list[list[float]] = [[0.0] * len(options) for options in choices]
    for (i, j, *_), value in zip(pairs, flat):
        scores[i][j] = value
    return scores


def option_length(option: str, delimiter: str = " ") -> int:
    """acc_norm's length of an option: its characters without the one leading ``delimiter`` the
    context/option join adds (lm-evaluation-harness divides by ``len(choice)``, the choice as the task
    lists it, while it scores ``delimiter + choice``)."""
    text = option[len(delimiter):] if delimiter and option.startswith(delimiter) else option
    return max(len(text), 1)


def pick_choice(loglikelihoods: Sequence[float], options: Sequence[str], normalize: bool = False,
                delimiter: str = " ") -> int:
    """Index of the best option (the first on ties, as ``np.argmax``); ``normalize`` divides each
    log-likelihood by :func:`option_length` (acc_norm)."""
    if normalize:
        return max(range(len(options)), key=lambda j: loglikelihoods[j] / option_length(options[j], delimiter))
    return max(range(len(options)), key=lambda j: loglikelihoods[j])
