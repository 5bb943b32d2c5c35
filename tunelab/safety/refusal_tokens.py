"""Refusal tokens: train a model to open every answer with a control token, then steer refusals at inference.

Training (``tunelab train --refusal-tokens single|categorical``):

* **single** adds ``[refuse]`` and ``[respond]``; **categorical** adds one ``[refuse:<category>]`` per
  refusal category of :data:`REFUSAL_CATEGORIES` plus ``[respond]``. They are added to the tokenizer as
  special tokens (so ``decode(skip_special_tokens=True)`` hides them), the embeddings are resized and
  the new rows start at the mean of the existing rows (tied input/output embeddings stay tied).
* every response is prefixed with its token: ``source: harmful-refusal`` records (the safety recipe)
  get the refuse token (categorical: the token of the record's category, mapped from the HarmBench
  topic), everything else ``[respond]``; a record field ``refusal_token`` overrides either.
* with PEFT methods the new rows train through PEFT's ``trainable_token_indices`` (TrainableTokens);
  the adapter directory holds the tokenizer, so ``load_with_adapter`` (or plain PEFT after
  ``base.resize_token_embeddings(len(tokenizer))``) rebuilds the model exactly.

Inference control (:class:`RefusalControl`, the ``first_step`` hook of ``generate``): one forward pass
gives p = softmax(logits / T) of the refuse tokens at the first response position. With a threshold τ
the first token is forced: the most likely *selected* refuse token if its p ≥ τ, else ``[respond]``.
With a bias b, b is added to the selected refuse logits at the first step only. Categories not
selected can never be emitted at the first step. :func:`run_refusal_calibration`
(``run_refusal_calibration(cfg: RefusalCalibrationConfig, run_dir=None) -> RefusalCalibrationResult``)
sweeps τ over first-step probabilities computed once per prompt (no generation needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from tunelab.control_tokens import (  # re-exported: the vocabulary moved down so evaluation can read it
    DEFAULT_CATEGORY, HARMFUL_SOURCE, MODES, REFUSAL_CATEGORIES, REFUSE, RESPOND, RefusalTokens, category_token,
    control_tokens, is_refuse_token, parse_categories, refusal_category,
)
from tunelab.errors import TunelabError
from tunelab.models import resize_for_tokenizer  # re-exported: moved down to models (loading and canaries use it)
from tunelab.results import CurveResult, RunDir
# the calibration's config and its τ parser live in the light config module (re-exported here)
from tunelab.safety.configs import DEFAULT_THRESHOLDS, RefusalCalibrationConfig, parse_thresholds  # noqa: F401
from tunelab.safety.results import RefusalCalibrationResult
from tunelab.train.plugins import Plugin, Run



# --------------------------------------------------------------------------- model and data
def add_refusal_tokens(model: Any, tokenizer: Any, spec: RefusalTokens) -> list[int]:
    """Add ``spec``'s tokens to ``tokenizer`` (special, so decoding can hide them) and resize ``model``; return their ids."""
    vocab = tokenizer.get_vocab()
    if any(t in vocab for t in spec.tokens):
        raise TunelabError("the model already has refusal tokens; train from its base model instead")
    tokenizer.add_tokens(spec.tokens, special_tokens=True)
    resize_for_tokenizer(model, tokenizer, spec.tokens)
    return list(spec.ids(tokenizer).values())


def prefix_chats(rows: Sequence[tuple[str, Any]], spec: RefusalTokens) -> list[list[dict[str, str]]]:
    """Validated chats (as ``tunelab.data.read_records``) whose assistant turns start with the record's token.

    The token is trained (it is what the model must learn to predict first). A record with a
    masked ``prefix`` (recovery augmentation) gets the token in front of the prefix, inside the
    masked part: the token then sits where inference puts it, and its un-augmented copy trains it.
    """
    from tunelab.data import validate_record

    chats = []
    for where, row in rows:
        chat = validate_record(row, where)
        token = spec.token_for(row, where)
        for msg in chat:
            if msg["role"] == "assistant":
                msg["content"] = token + msg["content"]
                if msg.get("prefix"):
                    msg["prefix"] = token + msg["prefix"]
        chats.append(chat)
    return chats


# --------------------------------------------------------------------------- inference control
def check_control(threshold: float | None = None, bias: float | None = None, categories: Sequence[str] | None = None,
                  temperature: float = 1.0) -> None:
    """Fail (before a model loads) on control settings that cannot work."""
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise TunelabError(f"--refusal-threshold must be in [0, 1], got {threshold}")
    if bias is not None and not math.isfinite(bias):
        raise TunelabError(f"--refusal-bias must be a finite number, got {bias}")
    if threshold is not None and bias is not None:
        raise TunelabError("give --refusal-threshold or --refusal-bias, not both")
    if not (math.isfinite(temperature) and temperature > 0):
        raise TunelabError(f"--refusal-temperature must be > 0, got {temperature}")
    if categories is not None:
        parse_categories(",".join(categories))


@dataclass
class RefusalControl:
    """The first-step rule: a callable on the first decoding step's scores ``[batch, vocab]``.

    ``selected`` are the refuse-token ids that may be emitted, ``blocked`` those of unselected
    categories (never emitted at the first step).
    """

    selected: list[int]
    blocked: list[int]
    respond: int
    threshold: float | None = None
    bias: float | None = None
    temperature: float = 1.0

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        if self.threshold is not None:
            choice = self.decide(refuse_probs(scores, self.selected, self.temperature), self.threshold)
            forced = torch.full_like(scores, -math.inf)
            forced[torch.arange(scores.shape[0], device=scores.device), choice.to(scores.device)] = 0.0
            return forced
        out = scores.clone()
        if self.bias is not None:
            out[:, self.selected] += self.bias
        if self.blocked:
            out[:, self.blocked] = -math.inf
        return out

    def decide(self, probs: torch.Tensor, threshold: float) -> torch.Tensor:
        """Token per row: the likeliest selected refuse token if its p ≥ τ, else ``[respond]``."""
        best, where = probs.max(-1)
        ids = torch.tensor(self.selected, dtype=torch.long, device=probs.device)
        return torch.where(best >= threshold, ids[where], torch.full_like(where, self.respond))


def refuse_probs(scores: torch.Tensor, refuse_ids: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """softmax(scores / T) at ``refuse_ids``: ``[batch, len(refuse_ids)]``."""
    return torch.softmax(scores.float() / temperature, dim=-1)[:, list(refuse_ids)]


def refusal_control(tokenizer: Any, threshold: float | None = None, bias: float | None = None,
                    categories: Sequence[str] | None = None, temperature: float = 1.0) -> RefusalControl | None:
    """The first-step rule for a model's tokenizer, or None when nothing is asked.

    Raises ``TunelabError`` when control is asked of a model without refusal tokens, or categories
    of a single-token model.
    """
    check_control(threshold, bias, categories, temperature)
    if threshold is None and bias is None and categories is None:
        return None
    spec = RefusalTokens.from_tokenizer(tokenizer)
    if spec is None:
        raise TunelabError("--refusal-threshold/--refusal-bias/--refusal-categories need a model trained with --refusal-tokens "
                           "(its adapter dir holds the tokenizer with the tokens)")
    if categories is not None and spec.mode != "categorical":
        raise TunelabError("--refusal-categories needs a model trained with --refusal-tokens categorical")
    ids = spec.ids(tokenizer)
    chosen = spec.categories if categories is None else list(categories)
    selected = [ids[spec.refuse[c]] for c in chosen]
    blocked = [ids[t] for c, t in spec.refuse.items() if c not in chosen]
    return RefusalControl(selected, blocked, ids[spec.respond], threshold, bias, temperature)


@dataclass(frozen=True)
class RefusalIntervention:
    """Refusal-token control as a :class:`tunelab.evaluate.intervention.GenerationIntervention`.

    Holds the options; the first-step rule is built for the model's tokenizer once it is loaded
    (:func:`refusal_control` needs the tokenizer's control tokens). Nothing acts around the forwards.
    """

    threshold: float | None = None
    bias: float | None = None
    categories: list[str] | None = None
    temperature: float = 1.0
    name: ClassVar[str] = "refusal_control"

    def first_step(self, tokenizer: Any) -> RefusalControl | None:
        """The first-step rule for ``tokenizer`` (raises for a model without refusal tokens)."""
        return refusal_control(tokenizer, self.threshold, self.bias, self.categories, self.temperature)

    def applied(self, model: Any) -> AbstractContextManager[None]:
        """Nothing to do around the forwards; records nothing."""
        return nullcontext(None)

    def check_task(self, task: str, scorer: str) -> None:
        """Any task: the rule is ignored where nothing is generated (choice scoring), as before."""
        return None


# --------------------------------------------------------------------------- calibration
@torch.inference_mode()
def first_step_probs(model: Any, tokenizer: Any, prompts: Sequence[str], refuse_ids: Sequence[int],
                     temperature: float = 1.0, batch_size: int = 16) -> torch.Tensor:
    """p(refuse token) at the first response position of every prompt: ``[len(prompts), len(refuse_ids)]``.

    Left-padded batches with positions from the attention mask, as ``generate`` does, so these are
    the probabilities the threshold rule sees.
    """
    from tunelab.evaluate.generation import pad_rows, render_prompts

    texts = render_prompts(tokenizer, list(prompts))
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = torch.zeros(len(texts), len(refuse_ids))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            chunk = encoded[start : start + batch_size]
            input_ids, mask = pad_rows(chunk, pad)
            input_ids, mask = input_ids.to(device), mask.to(device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            out[start : start + len(chunk)] = refuse_probs(logits, refuse_ids, temperature).cpu()
    finally:
        model.train(was_training)
    return out


def f1_score(tp: int, fp: int, fn: int) -> float:
    """F1 with refusal as the positive class: 2TP / (2TP + FP + FN); 0 when nothing is positive."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def sweep(harmful: torch.Tensor, benign: torch.Tensor, thresholds: Sequence[float],
          harmful_categories: Sequence[str], benign_categories: Sequence[str]) -> list[dict[str, Any]]:
    """Refusal rates and F1 per τ from first-step probabilities ``[n, k]`` of the selected refuse tokens.

    A prompt is refused at τ when its likeliest selected refuse token has p ≥ τ (the rule of
    :class:`RefusalControl`). Harmful prompts are the positives.
    """
    h_best = harmful.max(-1).values if harmful.numel() else torch.zeros(0)
    b_best = benign.max(-1).values if benign.numel() else torch.zeros(0)
    rows = []
    for tau in thresholds:
        h_ref, b_ref = (h_best >= tau).tolist(), (b_best >= tau).tolist()
        tp, fn, fp = sum(h_ref), len(h_ref) - sum(h_ref), sum(b_ref)
        by_category: dict[str, dict[str, Any]] = {}
        for name, flags, cats in (("harmful", h_ref, harmful_categories), ("benign", b_ref, benign_categories)):
            for flag, cat in zip(flags, cats):
                entry = by_category.setdefault(f"{name}/{cat}", {"set": name, "category": cat, "refused": 0, "n": 0})
                entry["refused"] += int(flag)
                entry["n"] += 1
        for entry in by_category.values():
            entry["refusal_rate"] = entry["refused"] / entry["n"]
        rows.append({
            "threshold": float(tau),
            "harmful_refusal_rate": tp / len(h_ref) if h_ref else float("nan"),
            "benign_refusal_rate": fp / len(b_ref) if b_ref else float("nan"),
            "tp": tp, "fp": fp, "fn": fn, "tn": len(b_ref) - fp,
            "f1": f1_score(tp, fp, fn),
            "by_category": dict(sorted(by_category.items())),
        })
    return rows


def run_refusal_calibration(cfg: RefusalCalibrationConfig, run_dir: RunDir | None = None) -> RefusalCalibrationResult:
    """Sweep τ on HarmBench (test split) and benign look-alikes (test split); write and return the result.

    A job (:class:`tunelab.results.Job`): ``run_dir`` (default ``cfg.run_dir()``, i.e. ``cfg.output``)
    receives ``metrics.json`` (kind ``refusal-calibration``: harmful/benign refusal rate and F1 vs τ in
    ``series``; written last), ``by-category/metrics.json`` (kind ``curve``: the refusal rate per prompt
    category) and ``outputs.jsonl`` (every prompt's first-step probabilities).
    """
    from tunelab.evaluate.loading import load_with_adapter
    from tunelab.evaluate.prompts import benign_sensitive_prompts, harmful_prompts
    from tunelab.layout import EVAL_OUTPUTS

    categories, temperature = cfg.refusal.refusal_categories, cfg.refusal.refusal_temperature
    check_control(categories=categories, temperature=temperature)
    cfg.validate()
    run_dir = run_dir if run_dir is not None else cfg.run_dir()
    model, adapter, limit, batch_size = cfg.model, cfg.adapter, cfg.limit, cfg.batch_size
    thresholds = list(cfg.thresholds) if cfg.thresholds is not None else list(DEFAULT_THRESHOLDS)
    out = run_dir.path
    if out.exists() and not out.is_dir():
        raise TunelabError(f"output {out} exists and is not a directory")
    if adapter is not None and not Path(adapter).is_dir():
        raise TunelabError(f"adapter directory not found: {adapter}")
    harmful = harmful_prompts(split="test", limit=limit)
    benign = benign_sensitive_prompts(limit=limit, split="test")
    lm, tokenizer = load_with_adapter(model, adapter)
    spec = RefusalTokens.from_tokenizer(tokenizer)
    if spec is None:
        raise TunelabError(f"{adapter or model}: no refusal tokens in its tokenizer; train with --refusal-tokens single|categorical")
    if categories is not None and spec.mode != "categorical":
        raise TunelabError("--refusal-categories needs a model trained with --refusal-tokens categorical")
    ids = spec.ids(tokenizer)
    chosen = spec.categories if categories is None else list(categories)
    refuse_ids = [ids[spec.refuse[c]] for c in chosen]
    p_h = first_step_probs(lm, tokenizer, [p["prompt"] for p in harmful], refuse_ids, temperature, batch_size)
    p_b = first_step_probs(lm, tokenizer, [p["prompt"] for p in benign], refuse_ids, temperature, batch_size)
    rows = sweep(p_h, p_b, thresholds, [p["category"] for p in harmful], [p["category"] for p in benign])
    taus = [r["threshold"] for r in rows]
    best = max(rows, key=lambda r: (r["f1"], -r["threshold"]))
    metrics = {
        "kind": "refusal-calibration", "name": "refusal-calibration", "title": "Refusal rate vs threshold",
        "xlabel": "threshold τ", "ylabel": "rate / F1", "model": model, "adapter": adapter, "mode": spec.mode,
        "categories": chosen, "temperature": temperature, "n_harmful": len(harmful), "n_benign": len(benign),
        "prompts": "HarmBench test split (harmful), tunelab benign look-alikes test split (benign)",
        "best_threshold": best["threshold"], "best_f1": best["f1"],
        "p_refuse_mean": {"harmful": p_h.max(-1).values.mean().item(), "benign": p_b.max(-1).values.mean().item()},
        "sweep": rows,
        "series": [{"label": "harmful refusal rate", "x": taus, "y": [r["harmful_refusal_rate"] for r in rows]},
                   {"label": "benign refusal rate", "x": taus, "y": [r["benign_refusal_rate"] for r in rows]},
                   {"label": "F1", "x": taus, "y": [r["f1"] for r in rows]}],
    }
    keys = sorted(rows[0]["by_category"]) if rows else []
    per_category = {
        "kind": "curve", "name": "refusal-calibration-by-category", "title": "Refusal rate per category vs threshold",
        "xlabel": "threshold τ", "ylabel": "refusal rate", "model": model, "adapter": adapter,
        "series": [{"label": k, "x": taus, "y": [r["by_category"][k]["refusal_rate"] for r in rows]} for k in keys],
    }
    records = ([{"set": "harmful", **p, "p_refuse": dict(zip(chosen, v))} for p, v in zip(harmful, p_h.tolist())]
               + [{"set": "benign", **p, "p_refuse": dict(zip(chosen, v))} for p, v in zip(benign, p_b.tolist())])
    # Outputs first, metrics.json last: a directory without it is not a finished audit.
    run_dir.write_text(EVAL_OUTPUTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    CurveResult.from_dict(per_category).write(run_dir.file("by-category"))
    result = RefusalCalibrationResult.from_dict(metrics)
    result.write(run_dir)
    return result


# --------------------------------------------------------------------------- training plug-in
class RefusalTokensPlugin(Plugin):
    """``tunelab train --refusal-tokens MODE``: prefix responses, add the tokens, train their rows."""

    claims = ("refusal_tokens",)

    def __init__(self, cfg: Any) -> None:
        """``cfg``: a training config with a ``refusal`` section (:class:`~tunelab.safety.train_config.RefusalTokensConfig`)."""
        cfg.refusal.validate(cfg)  # bad values fail before any data or model is read
        self.spec = RefusalTokens.from_mode(cfg.refusal.tokens)
        self.token_ids: list[int] = []

    def on_data(self, run: Run, rows: list[tuple[str, Any]], chats: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
        return prefix_chats(rows, self.spec)

    def on_model(self, run: Run) -> None:
        from tunelab.adapters import get_method

        self.token_ids = add_refusal_tokens(run.model, run.tokenizer, self.spec)
        if get_method(run.cfg.method).is_peft:
            run.settings.trainable_token_indices = tuple(self.token_ids)

    def on_prepared(self, run: Run) -> None:
        run.prepared.state["added_tokens"] = self.token_ids
        run.prepared.record["refusal_tokens"] = self.spec.record(run.tokenizer)
