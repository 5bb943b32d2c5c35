"""Membership scores for canaries: one number per canary, higher = "more likely trained on".

A canary is a chat record ``{"prompt": ..., "response": ...}`` whose response is the *secret*
(:meth:`tunelab.privacy.canaries.CanarySet.records`, or the ``Canary`` objects themselves).
Records are rendered and tokenized exactly as training renders them (:func:`tunelab.data.validate_record`
+ :func:`tunelab.data.tokenize_chat`), so the secret span is precisely the supervised span of
training: the assistant response tokens plus the template's end-of-turn marker(s); a record's
``"prefix"`` is read but not part of the secret, as in training.

Scores (all are "higher = member"); ``logp_t`` is the model's log-prob of token t, in nats:

* ``secret_loss`` (default): ``mean_{t in secret} logp_t`` = −(mean token loss on the secret span).
* ``sequence_loss``: ``mean_{t = 1..n-1} logp_t`` over the whole rendered sequence (every token
  after the first, chat template and system prompt included). Shown to make the point that it is
  a poor attack: the template/prompt tokens, identical for members and non-members, dominate it.
* ``min_k``: Min-K% Prob (Shi et al. 2023): the mean of the ``c = max(1, floor(n·k/100))`` lowest
  ``logp_t`` over the n secret tokens (``k`` in (0, 100], default 20). k = 100 is ``secret_loss``.
* ``zlib``: ``secret_loss / Z`` with ``Z = len(zlib.compress(secret.encode("utf-8")))`` (bytes,
  zlib's default level 6), ``secret`` being the response text (for ``messages`` records: the
  assistant turns' text, concatenated, minus any ``prefix``). This is −(loss / zlib entropy),
  the ratio of Carlini et al. 2021 ("Extracting training data from large language models",
  log-perplexity over zlib entropy) with the sign flipped so higher = member.
* ``reference``: ``secret_loss(model) − secret_loss(reference)`` = ``L_ref − L_model`` (the
  calibrated loss / reference-model attack): how much more likely the fine-tuned model finds the
  secret than a model that never saw it. ``reference`` is the base model (any causal LM with the
  same tokenizer) or ``"disable-adapter"``: the same PEFT model with its adapter switched off
  (``model.disable_adapter()``), i.e. the base weights without a second copy in memory. This needs
  an unmerged :class:`peft.PeftModel` (``load_with_adapter(..., merge=False)``).

Computation: canaries are sorted by length and padded (right or left; left padding passes explicit
``position_ids`` so every token keeps its unpadded position) into batches; each batch gets **one**
forward pass (``torch.inference_mode``, optional bf16 autocast) whose token log-probs feed every
score; ``reference`` adds one forward of the reference model per batch. As in training
(:class:`tunelab.train.objectives.CausalLMLoss`), the LM head runs only on the positions a score
needs: the secret tokens, or all tokens when ``sequence_loss`` is asked for. Log-probs are
computed in fp32 from the logits (``-cross_entropy``), in row chunks so the [tokens × vocab]
buffer stays bounded.
"""

from __future__ import annotations

import math
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from tunelab.data import IGNORE_INDEX, Example, tokenize_chat, validate_record
from tunelab.errors import TunelabError
from tunelab.privacy.audit_config import SCORES  # noqa: F401 (re-exported: the audit's option checks it)
from tunelab.train.objectives import CausalLMLoss

DEFAULT_SCORES = ("secret_loss",)
DISABLE_ADAPTER = "disable-adapter"
PADDING_SIDES = ("right", "left")
# Rows of the [rows, vocab] logits buffer computed at once (49k vocab: 4096 rows = 800 MB fp32).
HEAD_CHUNK = 4096


@dataclass
class TokenizedCanary:
    """One tokenized canary: ``labels`` is ``IGNORE_INDEX`` outside the secret span."""

    input_ids: list[int]
    labels: list[int]
    secret: str

    @property
    def n_secret(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def _secret_text(messages: list[dict[str, str]]) -> str:
    parts = []
    for msg in messages:
        if msg["role"] == "assistant":
            content = msg["content"]
            parts.append(content[len(msg["prefix"]):] if msg.get("prefix") else content)
    return "".join(parts)


def tokenize_canaries(records: Sequence[Any], tokenizer: Any, max_length: int | None = None) -> list[TokenizedCanary]:
    """Validate and tokenize records as training does; the secret span is the supervised span."""
    if isinstance(records, (str, bytes, dict)) or not isinstance(records, Iterable):
        raise TunelabError(f"records must be a list of {{'prompt', 'response'}} records, got {type(records).__name__}")
    records = list(records)
    if not records:
        raise TunelabError("no canary records to score (the list is empty)")
    canaries = []
    for i, record in enumerate(records):
        where = f"canary {i}"
        if callable(getattr(record, "record", None)):  # a tunelab.privacy.canaries.Canary
            record = record.record()
        messages = validate_record(record, where)
        ex: Example = tokenize_chat(messages, tokenizer, max_length if max_length is not None else 1 << 62)
        if ex.n_loss_tokens == 0:
            raise TunelabError(f"{where}: no secret tokens left (all cut off by max_length={max_length})")
        canaries.append(TokenizedCanary(ex.input_ids, ex.labels, _secret_text(messages)))
    return canaries


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first, stable), cut into batches of ``batch_size``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[j: j + batch_size] for j in range(0, len(order), batch_size)]


def pad_batch(canaries: list[TokenizedCanary], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``labels`` and ``position_ids`` (0.. over real tokens) for a batch."""
    width = max(len(c.input_ids) for c in canaries)
    input_ids = torch.full((len(canaries), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(canaries), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(canaries), width), dtype=torch.long)
    for row, c in enumerate(canaries):
        n = len(c.input_ids)
        cols = slice(width - n, width) if padding_side == "left" else slice(0, n)
        input_ids[row, cols] = torch.tensor(c.input_ids)
        labels[row, cols] = torch.tensor(c.labels)
        mask[row, cols] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "position_ids": position_ids}


class _TokenScorer(CausalLMLoss):
    """Per-token log-probs at chosen positions, with training's LM-head-on-kept-positions path."""

    def token_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       keep: torch.Tensor) -> torch.Tensor:
        """log p(input_ids[:, j+1] | input_ids[:, :j+1]) for each j with ``keep[:, j]`` (row-major order), fp32."""
        targets = input_ids[:, 1:][keep]
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        if isinstance(self.model, PeftModel) and self.model.peft_config[self.model.active_adapter].is_prompt_learning:
            # virtual tokens would shift every position; the decoder-only path would also skip them
            raise TunelabError("membership scores do not support prompt-learning PEFT adapters (virtual tokens)")
        if not self._fast:
            logits = self.model(**kwargs).logits[:, :-1][keep]
            return self._logp(lambda rows: logits[rows], targets)
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        hidden = base.get_decoder()(**kwargs).last_hidden_state[:, :-1][keep]
        head = base.get_output_embeddings()
        return self._logp(lambda rows: self._head(head, hidden[rows]), targets)

    @staticmethod
    def _logp(logits_of: Any, targets: torch.Tensor) -> torch.Tensor:
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=targets.device)
        for start in range(0, targets.shape[0], HEAD_CHUNK):
            rows = slice(start, start + HEAD_CHUNK)
            out[rows] = -F.cross_entropy(logits_of(rows).float(), targets[rows], reduction="none")
        return out


def _check_args(scores: Sequence[str], k: float, batch_size: int, padding_side: str, reference: Any,
                model: nn.Module) -> tuple[str, ...]:
    if isinstance(scores, str):
        scores = (scores,)
    scores = tuple(scores)
    if not scores:
        raise TunelabError(f"no scores asked for; choose from {', '.join(SCORES)}")
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise TunelabError(f"unknown membership score '{unknown[0]}'; choose from {', '.join(SCORES)}")
    if len(set(scores)) != len(scores):
        raise TunelabError(f"a score is listed twice: {', '.join(scores)}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or not 0 < k <= 100:
        raise TunelabError(f"min_k's k must be a percentage in (0, 100], got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TunelabError(f"batch_size must be a positive integer, got {batch_size!r}")
    if padding_side not in PADDING_SIDES:
        raise TunelabError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if "reference" in scores and reference is None:
        raise TunelabError("the 'reference' score needs reference= (a base model or 'disable-adapter')")
    if reference is not None and "reference" not in scores:
        raise TunelabError("reference= was given but 'reference' is not among the scores asked for")
    if isinstance(reference, str):
        if reference != DISABLE_ADAPTER:
            raise TunelabError(f"reference must be a model or '{DISABLE_ADAPTER}', got {reference!r}")
        if not isinstance(model, PeftModel):
            raise TunelabError("reference='disable-adapter' needs an unmerged PEFT model "
                               "(load it with load_with_adapter(..., merge=False))")
    elif reference is not None and not isinstance(reference, nn.Module):
        raise TunelabError(f"reference must be a model or '{DISABLE_ADAPTER}', got {type(reference).__name__}")
    return scores


def _min_k(logp: np.ndarray, k: float) -> float:
    count = max(1, math.floor(len(logp) * k / 100 + 1e-9))
    return float(np.sort(logp)[:count].mean())


def score_canaries(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    scores: Sequence[str] = DEFAULT_SCORES,
    *,
    batch_size: int = 32,
    reference: nn.Module | str | None = None,
    k: float = 20.0,
    padding_side: str = "right",
    bf16: bool = False,
    max_length: int | None = None,
) -> dict[str, np.ndarray]:
    """Membership scores of ``records`` (higher = more likely a member), one float64 array per score name.

    ``records``: ``{"prompt", "response"}`` (optionally ``"prefix"``) or ``{"messages": [...]}`` dicts,
    rendered with the tokenizer's chat template as in training. ``scores``: names from
    :data:`SCORES` (see the module doc for formulas). ``reference``: for the ``reference`` score, a
    model sharing the tokenizer, or ``"disable-adapter"``. ``k``: Min-K% percentage in (0, 100].
    ``bf16``: bf16 autocast for the forward passes (log-probs are taken in fp32). Arrays follow
    the order of ``records`` whatever the batching.
    """
    scores = _check_args(scores, k, batch_size, padding_side, reference, model)
    canaries = tokenize_canaries(records, tokenizer, max_length)
    token_lp = canary_token_logprobs(model, tokenizer, canaries, batch_size=batch_size, padding_side=padding_side,
                                     bf16=bf16, whole_sequence="sequence_loss" in scores)
    ref_lp = None
    if "reference" in scores:
        ref_model = model if reference == DISABLE_ADAPTER else reference
        ctx = model.disable_adapter() if reference == DISABLE_ADAPTER else nullcontext()
        with ctx:
            ref_lp = canary_token_logprobs(ref_model, tokenizer, canaries, batch_size=batch_size,
                                           padding_side=padding_side, bf16=bf16, whole_sequence=False)
    out: dict[str, np.ndarray] = {name: np.empty(len(canaries), dtype=np.float64) for name in scores}
    for i, c in enumerate(canaries):
        seq, secret = token_lp[i]
        secret_mean = float(secret.mean())
        for name in scores:
            if name == "secret_loss":
                value = secret_mean
            elif name == "sequence_loss":
                value = float(seq.mean())
            elif name == "min_k":
                value = _min_k(secret, k)
            elif name == "zlib":
                value = secret_mean / len(zlib.compress(c.secret.encode("utf-8")))
            else:  # reference
                value = secret_mean - float(ref_lp[i][1].mean())
            out[name][i] = value
    return out


@torch.inference_mode()
def canary_token_logprobs(
    model: nn.Module,
    tokenizer: Any,
    canaries: list[TokenizedCanary],
    *,
    batch_size: int = 32,
    padding_side: str = "right",
    bf16: bool = False,
    whole_sequence: bool = False,
) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """Per canary: (log-probs of tokens 1..n-1, or None unless ``whole_sequence``; log-probs of the secret tokens).

    One forward per length-sorted batch; float64 arrays (computed in fp32), in the order of ``canaries``.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scorer = _TokenScorer(model)
    was_training = model.training
    model.eval()
    result: list[tuple[np.ndarray | None, np.ndarray]] = [None] * len(canaries)  # type: ignore[list-item]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        for indices in _batches([len(c.input_ids) for c in canaries], batch_size):
            batch = pad_batch([canaries[i] for i in indices], pad_id, padding_side)
            batch = {key: value.to(device) for key, value in batch.items()}
            secret = batch["labels"][:, 1:] != IGNORE_INDEX
            keep = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool() if whole_sequence else secret
            with autocast:
                logp = scorer.token_logprobs(batch["input_ids"], batch["attention_mask"], batch["position_ids"], keep)
            is_secret = secret[keep].cpu().numpy()
            counts = keep.sum(dim=1).tolist()
            logp = logp.double().cpu().numpy()
            start = 0
            for row, i in enumerate(indices):
                part, flags = logp[start: start + counts[row]], is_secret[start: start + counts[row]]
                start += counts[row]
                result[i] = (part if whole_sequence else None, part[flags])
    finally:
        model.train(was_training)
    return result
