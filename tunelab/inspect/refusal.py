"""The refusal direction (Arditi et al. 2024, "Refusal in LLMs is mediated by a single direction").

1. **Candidates.** Harmful and harmless prompts are rendered with the chat template (generation
   prompt on); the template's post-instruction tokens (for SmolLM2 ``<|im_end|>\\n<|im_start|>
   assistant\\n``: everything after the user's instruction) end every row. A candidate
   ``r(pos, layer)`` is mean ``resid_pre`` over harmful prompts minus mean over harmless ones at
   one post-instruction position (``-k … -1``, counted from the end) and layer; means are streamed
   in fp64, no activations kept.
2. **Refusal tokens** are the first tokens the model itself refuses with: greedy answers to the
   harmful selection prompts that :func:`tunelab.evaluate.judges.is_refusal` flags, their first
   tokens by frequency until 90% of refusals are covered (at most 4), leaving out tokens that open
   more than a fifth of the compliant harmless answers; ``refusal_tokens`` overrides them. The
   refusal score at the last prompt position is ``log p_ref − log(1 − p_ref)``, ``p_ref`` the sum
   of the refusal tokens' probabilities. As in the paper only harmful selection prompts the model
   refuses (score > 0) and harmless ones it does not (< 0) are kept, with a floor on how many.
3. **Selection.** Every candidate gets (i) the refusal score on harmful prompts with it ablated at
   every layer and position (lower is better), (ii) the steering score: the refusal score on
   harmless prompts with the raw candidate added at its layer's ``resid_pre`` (must be > 0),
   (iii) KL(baseline ‖ ablated) of the last position's next-token distribution on harmless
   prompts (< 0.1), (iv) layer < 80% of the depth. The lowest (i) among candidates passing all
   filters wins (:func:`select`); when none pass, the lowest (i) overall, flagged.
4. **Weight orthogonalisation** (:func:`orthogonalize`) writes the ablation into the weights:
   ``W ← W − r̂ r̂ᵀ W`` on the output side of every ``o_proj`` and ``down_proj`` (biases too) and on
   the embedding rows; a tied LM head is untied first so it stays unchanged.
5. **Measurements** on held-out prompts: baseline, ablation, activation addition and the
   orthogonalized model — ASR and refusal rate on harmful prompts, over-refusal on benign ones
   (``--judge``, keyword by default, with the degenerate-text guard: broken text is counted
   degenerate, not compliance), cross-entropy on held-out prose.

Forwards share each batch's common token prefix (the template's system prompt) through a KV cache
computed once per batch, and keep only the last position's logits.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.options import check_fields, comma_list, int_ranges, option
from tunelab.configs import sectioned
from tunelab.evaluate.judges import PROVENANCE_KEYS, Judge, is_refusal
from tunelab.evaluate.options import JudgeOptions
from tunelab.inspect.hooks import blocks, geometry, model_device, observe, text_config
from tunelab.inspect.steering import direction_vector, steer
from tunelab.layout import atomic_write_text
from tunelab.inspect.results import RefusalDirectionResult
from tunelab.results import RunDir

KIND = "refusal-direction"
ABLATION_POINTS = ("resid_pre", "attn_out", "mlp_out")
KL_THRESHOLD = 0.1
STEERING_THRESHOLD = 0.0
DEPTH = 0.8
COVERAGE = 0.9
MAX_REFUSAL_TOKENS = 4
HARMLESS_SHARE = 0.2
NO_REFUSALS = ("the model refuses none of the harmful prompts; the refusal direction needs a model that refuses "
               "(e.g. a safety adapter)")
_PLACEHOLDER = "Placeholder instruction"
DIRECTION_FILE = "direction.safetensors"
RAW_FILE = "direction_raw.safetensors"
PLOT_FILE = "candidates.png"
RESPONSES_FILE = "responses.jsonl"


# --------------------------------------------------------------------------- prompts and the template


def post_instruction_ids(tokenizer: Any) -> list[int]:
    """Token ids the chat template puts after the user's instruction (generation prompt on).

    Found from the template itself: a placeholder instruction is rendered, and the tokens of the
    rendering that are not tokens of the text up to the placeholder's end are the post-instruction
    ones (a token straddling the boundary counts as template).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise TunelabError("the refusal direction needs a chat model: the tokenizer has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _PLACEHOLDER}], tokenize=False,
                                         add_generation_prompt=True)
    end = text.rfind(_PLACEHOLDER)
    if end < 0:
        raise TunelabError("the chat template does not contain the user's message; cannot find its post-instruction tokens")
    end += len(_PLACEHOLDER)
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = tokenizer(text[:end], add_special_tokens=False)["input_ids"]
    same = 0
    while same < min(len(full), len(head)) and full[same] == head[same]:
        same += 1
    tail = full[same:]
    if not tail:
        raise TunelabError("the chat template adds no tokens after the user's instruction; there are no "
                           "post-instruction positions to take the refusal direction from")
    return tail


def encode_prompts(tokenizer: Any, prompts: Sequence[Any], post: Sequence[int] | None = None) -> list[list[int]]:
    """Chat-rendered token ids of ``prompts`` (strings or ``{"prompt": ...}`` rows), each checked to
    end with the post-instruction tokens ``post`` (default: :func:`post_instruction_ids`)."""
    from tunelab.evaluate.generation import render_prompts

    post = list(post_instruction_ids(tokenizer) if post is None else post)
    texts = [p["prompt"] if isinstance(p, dict) else p for p in prompts]
    rendered = render_prompts(tokenizer, texts, chat=True)
    encoded = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    k = len(post)
    for i, ids in enumerate(encoded):
        if len(ids) <= k or ids[-k:] != post:
            raise TunelabError(f"prompt {i} ({texts[i][:40]!r}) does not end with the template's {k} post-instruction "
                               "tokens after tokenization; cannot align positions across prompts")
    return [list(ids) for ids in encoded]


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise TunelabError("the tokenizer has neither a pad nor an EOS token")
    return int(pad)


# --------------------------------------------------------------------------- forwards


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first, n = rows[0], min(len(r) for r in rows)
    p = 0
    while p < n and all(r[p] == first[p] for r in rows):
        p += 1
    return p


@torch.inference_mode()
def _forward_last(model: nn.Module, rows: Sequence[Sequence[int]], pad: int, keep: int = 1,
                  during_tail: Callable[[], AbstractContextManager[Any]] | None = None) -> torch.Tensor:
    """Next-token logits ``[len(rows), vocab]`` (fp32) at each row's last position.

    The rows' common prefix runs once (batch 1) into a KV cache shared by the batch; the rest runs
    left-padded with positions from the attention mask, so every row sees the positions it would
    alone. ``keep`` tokens of every row stay in the batched part, where ``during_tail`` (a context
    factory, e.g. an activation observer) is active; interventions around the call see both parts.
    """
    from tunelab.evaluate.generation import cache_argument, pad_rows, returned_cache

    device = model_device(model)
    share = max(0, min(_common_prefix(rows), min(len(r) for r in rows) - keep))
    cache_kwarg = cache_argument(model)
    if cache_kwarg is None:
        share = 0  # no KV cache to share the prefix through
    cache = None
    if share > 0:
        head = torch.tensor([list(rows[0][:share])], device=device)
        cache = returned_cache(model(input_ids=head, use_cache=True, logits_to_keep=1))
        cache.batch_repeat_interleave(len(rows))
    ids, mask = pad_rows([r[share:] for r in rows], pad)
    positions = share + (mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.cat([torch.ones((len(rows), share), dtype=torch.long), mask], dim=1)
    with during_tail() if during_tail is not None else nullcontext():
        extra = {cache_kwarg: cache} if cache is not None else {}
        out = model(input_ids=ids.to(device), attention_mask=full_mask.to(device), position_ids=positions.to(device),
                    use_cache=cache is not None, logits_to_keep=1, **extra)
    return out.logits[:, -1].float()


def last_logits(model: nn.Module, encoded: Sequence[Sequence[int]], pad: int, *, batch_size: int = 16) -> torch.Tensor:
    """Last-position next-token logits ``[N, vocab]`` (fp32, CPU) of token-id rows, in batches."""
    was_training = model.training
    model.eval()
    try:
        parts = [_forward_last(model, encoded[b : b + batch_size], pad).cpu() for b in range(0, len(encoded), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def candidate_directions(model: nn.Module, harmful: Sequence[Sequence[int]], harmless: Sequence[Sequence[int]], k: int,
                         pad: int, *, batch_size: int = 16) -> torch.Tensor:
    """Difference of mean ``resid_pre`` (harmful − harmless) at the last ``k`` positions of every
    layer: ``[k, n_layers, hidden]`` fp32; index 0 is position ``-k``, index ``k-1`` the last token."""
    geo = geometry(model)
    means = []
    was_training = model.training
    model.eval()
    try:
        for rows in (harmful, harmless):
            if not rows:
                raise TunelabError("the refusal direction needs at least one harmful and one harmless prompt")
            sums = torch.zeros((geo.n_layers, k, geo.hidden), dtype=torch.float64)

            def take(point: str, value: torch.Tensor, layer: int, sums: torch.Tensor = sums) -> None:
                sums[layer] += value[:, -k:].double().sum(0).cpu()

            for b in range(0, len(rows), batch_size):
                _forward_last(model, rows[b : b + batch_size], pad, keep=k,
                              during_tail=lambda: observe(model, "resid_pre", take))
            means.append(sums / len(rows))
    finally:
        model.train(was_training)
    return (means[0] - means[1]).permute(1, 0, 2).float().contiguous()


# --------------------------------------------------------------------------- scores


def refusal_score(logits: torch.Tensor, tokens: Sequence[int]) -> torch.Tensor:
    """``log p_ref − log(1 − p_ref)`` per row (fp64), ``p_ref`` the summed probability of ``tokens``."""
    if not len(tokens):
        raise TunelabError("the refusal score needs at least one refusal token")
    logp = torch.log_softmax(logits.double(), dim=-1)
    lp = torch.logsumexp(logp[:, list(tokens)], dim=-1)
    return lp - torch.log((-torch.expm1(lp)).clamp(min=1e-300))


def kl_divergence(base_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ new) of the next-token distributions, per row (fp64)."""
    p = torch.log_softmax(base_logits.double(), dim=-1)
    q = torch.log_softmax(new_logits.double(), dim=-1)
    return (p.exp() * (p - q)).sum(-1)


def derive_refusal_tokens(harmful: Sequence[tuple[Sequence[int], str]], harmless: Sequence[tuple[Sequence[int], str]],
                          *, coverage: float = COVERAGE, max_tokens: int = MAX_REFUSAL_TOKENS,
                          harmless_share: float = HARMLESS_SHARE) -> dict[str, Any]:
    """The first tokens of the model's refusals, from ``(new token ids, text)`` answers.

    Refusals are the harmful answers :func:`is_refusal` flags (an empty answer does not count: it
    has no first token). Their first tokens are taken by frequency until ``coverage`` of the
    refusals is covered, at most ``max_tokens``, skipping tokens that open more than
    ``harmless_share`` of the compliant (not refused) harmless answers. Returns ``{"ids", "counts",
    "refusals", "covered", "excluded"}``; raises when the model refused nothing.
    """
    refused = [ids[0] for ids, text in harmful if ids and text.strip() and is_refusal(text)]
    if not refused:
        raise TunelabError(NO_REFUSALS)
    compliant = [ids[0] for ids, text in harmless if ids and text.strip() and not is_refusal(text)]
    opens_harmless = Counter(compliant)
    counts = Counter(refused)
    chosen: list[int] = []
    excluded: list[int] = []
    covered = 0
    for token, n in counts.most_common():
        if covered >= coverage * len(refused) or len(chosen) >= max_tokens:
            break
        if compliant and opens_harmless[token] / len(compliant) > harmless_share:
            excluded.append(token)
            continue
        chosen.append(token)
        covered += n
    note = None
    if not chosen:  # every refusal opener also opens compliant answers: keep the most frequent anyway
        chosen = [counts.most_common(1)[0][0]]
        covered = counts[chosen[0]]
        excluded = [t for t in excluded if t != chosen[0]]
        note = "every refusal opener also opens many compliant harmless answers; kept the most frequent one"
    return {"ids": chosen, "counts": {t: counts[t] for t in chosen}, "refusals": len(refused), "covered": covered / len(refused),
            "excluded": excluded, "harmless_opening": {t: opens_harmless[t] / len(compliant) if compliant else 0.0 for t in chosen},
            "note": note}


def token_ids(tokenizer: Any, tokens: Sequence[str]) -> list[int]:
    """Ids of refusal tokens given as text; each must be exactly one token."""
    out = []
    for text in tokens:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise TunelabError(f"--refusal-tokens: {text!r} is {len(ids)} tokens; give single tokens (e.g. I,Sorry)")
        out.append(int(ids[0]))
    return list(dict.fromkeys(out))


def keep_refused(harmful_scores: torch.Tensor, harmless_scores: torch.Tensor, floor: int) -> tuple[list[int], list[int]]:
    """Indices of harmful prompts the model refuses (score > 0) and harmless ones it does not (< 0);
    when fewer than ``floor`` remain, the ``floor`` most (least) refusing instead."""
    def pick(scores: torch.Tensor, keep: torch.Tensor, descending: bool) -> list[int]:
        idx = keep.nonzero().flatten().tolist()
        need = min(floor, len(scores))
        if len(idx) >= need:
            return idx
        return sorted(torch.argsort(scores, descending=descending)[:need].tolist())

    return pick(harmful_scores, harmful_scores > 0, True), pick(harmless_scores, harmless_scores < 0, False)


# --------------------------------------------------------------------------- interventions


def ablation(model: nn.Module, direction: torch.Tensor) -> AbstractContextManager[None]:
    """Remove the component along ``direction`` at every layer's input and every attention and MLP output."""
    n_layers = geometry(model).n_layers
    return steer(model, direction_vector(direction, n_layers), 1.0, mode="ablate", points=ABLATION_POINTS)


def addition(model: nn.Module, vector: torch.Tensor, layer: int, coeff: float = 1.0) -> AbstractContextManager[None]:
    """Add ``coeff · vector`` (the raw difference of means) to ``resid_pre`` of ``layer`` at every position."""
    n_layers = geometry(model).n_layers
    return steer(model, direction_vector(vector, n_layers, [layer]), coeff, mode="add", points="resid_pre")


@torch.no_grad()
def orthogonalize(model: nn.Module, direction: torch.Tensor) -> nn.Module:
    """Project ``direction`` out of everything that writes to the residual stream, in place.

    Embedding rows and the output side of every ``o_proj`` and ``down_proj`` (biases included):
    ``W ← W − r̂ r̂ᵀ W``. A tied LM head is untied first (its own copy of the original weights, and
    ``tie_word_embeddings`` off) so the logits' read-out is unchanged. Idempotent.
    """
    unit = direction.detach().double().flatten()
    norm = unit.norm()
    if not norm > 0 or not torch.isfinite(norm):
        raise TunelabError("cannot orthogonalize against a zero (or non-finite) direction")
    unit = unit / norm
    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == embedding.weight.data_ptr():
        head.weight = nn.Parameter(embedding.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    for config in {id(c): c for c in (model.config, text_config(model))}.values():
        if getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False

    def rows(weight: torch.Tensor) -> None:  # [n, hidden]: remove each row's component
        u = unit.to(weight.device)
        w = weight.double()
        weight.copy_((w - (w @ u)[:, None] * u[None, :]).to(weight.dtype))

    def columns(weight: torch.Tensor) -> None:  # [hidden, in]: remove the output's component
        u = unit.to(weight.device)
        w = weight.double()
        weight.copy_((w - u[:, None] * (u @ w)[None, :]).to(weight.dtype))

    rows(embedding.weight)
    for block in blocks(model):
        for name in ("o_proj", "down_proj"):
            linear = block.part(name)
            columns(linear.weight)
            if getattr(linear, "bias", None) is not None:
                rows(linear.bias[None])  # a view: written through
    return model


def export_orthogonalized(model: nn.Module, tokenizer: Any, direction: torch.Tensor, out_dir: str | Path, *,
                          copy_model: bool = True, meta: dict[str, Any] | None = None) -> Path:
    """Write the orthogonalized model (a copy unless ``copy_model=False``) as a Hugging Face model
    directory: safetensors weights, config and tokenizer, loadable by ``AutoModelForCausalLM`` and
    :func:`tunelab.models.load_model`."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TunelabError(f"--export {out} exists and is not a directory")
    target = copy.deepcopy(model) if copy_model else model
    orthogonalize(target, direction)
    out.mkdir(parents=True, exist_ok=True)
    target.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if meta:
        atomic_write_text(out / "refusal_direction.json", json.dumps(meta, indent=1))
    return out


# --------------------------------------------------------------------------- selection


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def select(candidates: Sequence[dict[str, Any]], n_layers: int, *, kl_threshold: float = KL_THRESHOLD,
           steering_threshold: float = STEERING_THRESHOLD, depth: float = DEPTH) -> dict[str, Any]:
    """Pick the refusal direction from scored candidates (pure).

    ``candidates`` are rows with ``position``, ``layer``, ``refusal_score`` (ablated, harmful),
    ``steering_score`` (added, harmless) and ``kl``; a row without scores (a zero direction) never
    passes. Filters: ``steering > steering_threshold``, ``kl < kl_threshold``, ``layer <
    int(depth · n_layers)``. The lowest refusal score among those passing wins; when none pass, the
    lowest overall, with ``filters_passed`` False and ``reason`` naming the filter that removed them.
    Returns ``{"selected", "filters_passed", "reason", "n_passed", "candidates"}`` (rows annotated
    with ``passed`` and ``filtered_by``).
    """
    last_layer = int(n_layers * depth)
    table = []
    for c in candidates:
        scores = [c.get("refusal_score"), c.get("steering_score"), c.get("kl")]
        if not all(_finite(v) for v in scores):
            failed = ["zero"]
        else:
            failed = []
            if not c["layer"] < last_layer:
                failed.append("depth")
            if not c["kl"] < kl_threshold:
                failed.append("kl")
            if not c["steering_score"] > steering_threshold:
                failed.append("steering")
        table.append({**c, "passed": not failed, "filtered_by": failed})
    scored = [c for c in table if c["filtered_by"] != ["zero"]]
    if not scored:
        raise TunelabError("every candidate direction is zero: harmful and harmless prompts give the same activations")
    passed = [c for c in table if c["passed"]]
    pool = passed or scored
    best = min(pool, key=lambda c: (c["refusal_score"], c["layer"], c["position"]))
    reason = None
    if not passed:
        names = {"depth": f"depth (layer < {last_layer} = {depth:g} of {n_layers} layers)",
                 "kl": f"KL (< {kl_threshold:g} on harmless prompts)",
                 "steering": f"steering (refusal score > {steering_threshold:g} when added on harmless prompts)"}
        removed = {f: sum(f in c["filtered_by"] for c in scored) for f in names}
        alone = [f for f, n in removed.items() if n == len(scored)]
        if alone:
            reason = f"the {' and the '.join(names[f] for f in alone)} filter removed every candidate"
        else:
            reason = ("no candidate passes every filter (of " + str(len(scored)) + ": "
                      + ", ".join(f"{f} removed {n}" for f, n in removed.items()) + ")")
        reason += "; picked the lowest ablated refusal score anyway"
    return {"selected": best, "filters_passed": bool(passed), "reason": reason, "n_passed": len(passed), "candidates": table}


def score_candidates(model: nn.Module, candidates: torch.Tensor, harmful: Sequence[Sequence[int]],
                     harmless: Sequence[Sequence[int]], tokens: Sequence[int], pad: int, *,
                     positions: Sequence[int], layers: Sequence[int], batch_size: int = 16,
                     progress: bool = True) -> list[dict[str, Any]]:
    """The three scores of every candidate at ``positions`` (``-k … -1``) × ``layers``.

    Ablation runs harmful and harmless prompts in one pass (refusal score and KL); addition runs the
    harmless prompts again. Zero candidates (e.g. layer 0, where the post-instruction tokens'
    embeddings are the same for every prompt) get no scores.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    k = candidates.shape[0]
    base_harmless = last_logits(model, harmless, pad, batch_size=batch_size)
    both = list(harmful) + list(harmless)
    n_h = len(harmful)
    largest = float(candidates.norm(dim=-1).max())
    rows = []
    columns = (TextColumn("scoring candidate directions"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    todo = [(p, layer) for p in positions for layer in layers]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("candidates", total=len(todo))
        for p, layer in todo:
            r = candidates[k + p, layer]
            norm = float(r.norm())
            row: dict[str, Any] = {"position": p, "layer": layer, "norm": norm}
            if not norm > 1e-6 * max(largest, 1e-30):
                rows.append({**row, "refusal_score": None, "steering_score": None, "kl": None})
                bar.advance(task)
                continue
            with ablation(model, r):
                logits = last_logits(model, both, pad, batch_size=batch_size)
            with addition(model, r, layer):
                added = last_logits(model, harmless, pad, batch_size=batch_size)
            rows.append({**row, "refusal_score": float(refusal_score(logits[:n_h], tokens).mean()),
                         "steering_score": float(refusal_score(added, tokens).mean()),
                         "kl": float(kl_divergence(base_harmless, logits[n_h:]).mean())})
            bar.advance(task)
    return rows


# --------------------------------------------------------------------------- measurements


# What a measured row keeps of the safety suite's result: its rates and who judged them.
SAFETY_KEYS = ("asr", "refusal_rate", "over_refusal", "asr_fluent", "degenerate_rate", "n_degenerate", "n_harmful", "n_benign",
               "intervals", *PROVENANCE_KEYS)


def measure(model: nn.Module, tokenizer: Any, interventions: dict[str, tuple[nn.Module, Callable[[], AbstractContextManager[Any]]]],
            harmful: Sequence[dict[str, Any]], benign: Sequence[dict[str, Any]], texts: Sequence[str], *,
            judge: Judge | None = None, max_new_tokens: int = 48, batch_size: int = 16,
            progress: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Safety suite (``judge``, default keyword; the degenerate-text guard on) and held-out
    cross-entropy under each intervention.

    ``interventions`` maps a name to ``(model, context factory)``. Answers are generated inside
    the context and judged outside it: the guard's likelihood test scores them under ``model``
    without any intervention (``guard_reference``), so an ablation that makes token salad is
    judged against the model it was made from. Returns (rows, response records); a row has the
    suite's rates (ASR, fluent ASR, degenerate and refusal rates, over-refusal) and the judge's
    provenance, a record its answer's ``verdict``.
    """
    from tunelab.evaluate.judges import get_judge
    from tunelab.evaluate.safety import judge_safety, safety_answers
    from tunelab.inspect.pruning import perplexity

    judge = judge if judge is not None else get_judge("keyword")
    rows, records = [], []
    for name, (m, context) in interventions.items():
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"measuring: {name}", highlight=False)
        with context():
            answers = safety_answers(m, tokenizer, harmful, benign, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, progress=progress)
            ppl = perplexity(m, tokenizer, texts, batch_size=max(1, min(batch_size, 8))) if texts else None
        safety = judge_safety(answers, judge, nll_reference=(model, tokenizer), reference_name="un-intervened model")
        rows.append({"intervention": name, **{k: safety[k] for k in SAFETY_KEYS},
                     "ce": math.log(ppl) if ppl else None, "ppl": ppl})
        records += [{"intervention": name, "set": r["set"], "prompt": r["prompt"], "response": r["response"],
                     "refused": r["refused"], "verdict": r["verdict"], **{k: r[k] for k in ("degenerate", "nll") if k in r}}
                    for r in safety["records"]]
    return rows, records


# --------------------------------------------------------------------------- config and run


def parse_positions(text: str | None) -> list[int] | None:
    """``"-1,-2"`` → post-instruction positions (offsets from the prompt's end); None stays None."""
    if text is None or not text.strip():
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TunelabError(f"--positions must be comma-separated negative offsets from the prompt's end like -1,-2, got '{text}'") from None
    return list(dict.fromkeys(out)) or None


@sectioned
@dataclass
class RefusalConfig:
    """Everything ``tunelab inspect refusal-direction`` needs; ``validate`` runs before any model is loaded."""

    model: str = option("smollm2-135m", show_default="smollm2-135m", help="alias, local dir or hub id")
    # e.g. a safety adapter (merged first): the direction needs a model that refuses
    adapter: str | None = option(None, help="PEFT adapter or tunelab run dir, e.g. a safety adapter (merged first)")
    harmful_limit: int = option(32, min=1, show_default="32", help="harmful selection prompts (HarmBench train split)")
    # benign look-alikes
    harmless_limit: int = option(32, min=1, show_default="32", help="harmless selection prompts (train split)")
    eval_limit: int = option(32, min=1, show_default="32", help="held-out harmful and benign prompts each")
    ce_limit: int = option(32, min=1, show_default="32", help="held-out passages for cross-entropy")
    max_new_tokens: int = option(48, min=1, show_default="48", help="tokens per measured answer")
    judging: JudgeOptions = field(default_factory=JudgeOptions)  # --judge, --judge-threshold (as eval's)
    # no flag (YAML only): greedy tokens per selection prompt to find the refusal tokens
    probe_tokens: int = option(16, min=1, help="greedy tokens per selection prompt to find the refusal tokens")
    # default: those below the depth filter (all on a tiny model)
    layers: list[int] | None = option(None, parse=int_ranges("--layers"), show_default="those below 80% depth",
                                      help="candidate layers, e.g. 4-12")
    # -k..-1; default: every post-instruction token
    positions: list[int] | None = option(None, parse=parse_positions, show_default="all post-instruction tokens",
                                         help="candidate positions counted from the prompt's end, e.g. -1,-2")
    # override: single tokens, e.g. ["I", "Sorry"]
    refusal_tokens: list[str] | None = option(None, parse=lambda text: comma_list(text, "--refusal-tokens"),
                                              show_default="derived from its answers",
                                              help="comma-separated single tokens the model refuses with")
    kl_threshold: float = option(KL_THRESHOLD, gt=0, show_default=f"{KL_THRESHOLD}", help="KL filter on harmless prompts")
    # no flags (YAML only)
    steering_threshold: float = option(STEERING_THRESHOLD, help="steering filter: least refusal score added at the layer")
    depth: float = option(DEPTH, gt=0, max=1, help="candidate layers lie below this fraction of the depth")
    min_prompts: int = option(4, min=1, help="floor on the selection prompts kept by the refusal filter")
    measure: bool = option(True, flag="--measure/--no-measure", show_default="--measure",
                           help="safety and cross-entropy under each intervention")
    export: str | None = option(None, help="write the orthogonalized model (HF directory) here")
    batch_size: int = option(16, min=1, show_default="16", help="sequences per forward")
    seed: int = option(0, show_default="0", help="benign prompt sample")
    output: str | None = option(None, show_default="ADAPTER/inspect/refusal-direction or runs/inspect/refusal-direction-MODEL",
                                help="results dir")

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without loading a model."""
        check_fields(self)  # one-field bounds from the fields' metadata
        self.judging.check()
        for layer in self.layers or []:
            if layer < 0:
                raise TunelabError(f"--layers: layer {layer} is negative; give layer numbers 0..n_layers-1")
        for p in self.positions or []:
            if p >= 0:
                raise TunelabError(f"--positions: {p} is not a negative offset; positions count back from the prompt's "
                                   "end over the template's post-instruction tokens (-1 = the last token)")
        if self.refusal_tokens is not None and not [t for t in self.refusal_tokens if t]:
            raise TunelabError("--refusal-tokens needs at least one token")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise TunelabError(f"adapter directory not found: {self.adapter}")
        if self.export is not None and Path(self.export).exists() and not Path(self.export).is_dir():
            raise TunelabError(f"--export {self.export} exists and is not a directory")

    def output_dir(self) -> Path:
        """``--output``, else ``ADAPTER/inspect/refusal-direction``, else ``runs/inspect/refusal-direction-MODEL``."""
        from tunelab.inspect.run import _default_output

        return Path(self.output) if self.output else _default_output(KIND, self.model, self.adapter)

    def run_dir(self) -> RunDir:
        """The job's default :class:`RunDir` (:meth:`output_dir`; rewritten on every run, as always)."""
        return RunDir(self.output_dir(), what="a refusal direction")


def _check_choices(cfg: RefusalConfig, n_layers: int, k: int) -> tuple[list[int], list[int]]:
    """Candidate (positions, layers), checked against the model."""
    for layer in cfg.layers or []:
        if not 0 <= layer < n_layers:
            raise TunelabError(f"--layers: layer {layer} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    for p in cfg.positions or []:
        if not -k <= p < 0:
            raise TunelabError(f"--positions: {p} out of range: the chat template has {k} post-instruction tokens (-{k}..-1)")
    below = int(n_layers * cfg.depth)
    layers = sorted(cfg.layers) if cfg.layers else list(range(below if below >= 2 else n_layers))
    positions = sorted(cfg.positions) if cfg.positions else list(range(-k, 0))
    return positions, layers


def _log(progress: bool, text: str) -> None:
    if progress:
        from rich.console import Console

        Console(stderr=True).print(text, highlight=False, markup=False)


def _refusal_tokens(cfg: RefusalConfig, model: Any, tokenizer: Any, harmful_sel: list[dict[str, Any]],
                    harmless_sel: list[dict[str, Any]], override: list[int] | None,
                    progress: bool) -> tuple[list[int], dict[str, Any]]:
    """Step 1 of :func:`run_refusal`: how the model opens its refusals (greedy, a few tokens), or the override."""
    from tunelab.evaluate.generation import generate_ids

    texts_sel = [p["prompt"] for p in harmful_sel + harmless_sel]
    answers = generate_ids(model, tokenizer, texts_sel, max_new_tokens=cfg.probe_tokens, batch_size=cfg.batch_size,
                           progress=progress)
    decoded = [(ids, tokenizer.decode(ids, skip_special_tokens=True).strip()) for ids in answers]
    n_h = len(harmful_sel)
    derived = derive_refusal_tokens(decoded[:n_h], decoded[n_h:])  # raises when nothing is refused
    tokens = override or derived["ids"]
    refusal_info = {"source": "override" if cfg.refusal_tokens else "derived", "tokens": [tokenizer.decode([t]) for t in tokens],
                    "ids": tokens, "refused_harmful": derived["refusals"], "n_harmful": n_h,
                    "covered": derived["covered"] if not cfg.refusal_tokens else None,
                    "excluded": [tokenizer.decode([t]) for t in derived["excluded"]], "note": derived["note"]}
    return tokens, refusal_info


def _selection_prompts(cfg: RefusalConfig, model: Any, tokenizer: Any, harmful_sel: list[dict[str, Any]],
                       harmless_sel: list[dict[str, Any]], post: list[int], pad: int, tokens: list[int],
                       ) -> tuple[list[list[int]], list[list[int]], dict[str, Any], dict[str, float]]:
    """Step 2: keep the harmful prompts the model refuses and the harmless ones it does not.

    Returns (harmful ids, harmless ids, the filter's counts, the baseline refusal scores).
    """
    harmful_ids = encode_prompts(tokenizer, harmful_sel, post)
    harmless_ids = encode_prompts(tokenizer, harmless_sel, post)
    base_h = refusal_score(last_logits(model, harmful_ids, pad, batch_size=cfg.batch_size), tokens)
    base_b = refusal_score(last_logits(model, harmless_ids, pad, batch_size=cfg.batch_size), tokens)
    keep_h, keep_b = keep_refused(base_h, base_b, cfg.min_prompts)
    harmful_ids = [harmful_ids[i] for i in keep_h]
    harmless_ids = [harmless_ids[i] for i in keep_b]
    filtering = {"harmful": len(harmful_sel), "harmful_refusing": int((base_h > 0).sum()), "harmful_kept": len(keep_h),
                 "harmless": len(harmless_sel), "harmless_not_refusing": int((base_b < 0).sum()), "harmless_kept": len(keep_b),
                 "floor": cfg.min_prompts}
    baseline = {"harmful_refusal_score": float(base_h[keep_h].mean()), "harmless_refusal_score": float(base_b[keep_b].mean()),
                "harmful_refusal_score_all": float(base_h.mean()), "harmless_refusal_score_all": float(base_b.mean())}
    return harmful_ids, harmless_ids, filtering, baseline


def _measure_direction(cfg: RefusalConfig, model: Any, tokenizer: Any, ortho: Any, unit: torch.Tensor, raw: torch.Tensor,
                       layer: int, run_dir: RunDir, progress: bool) -> tuple[list[dict[str, Any]], float]:
    """Last step (``--measure``): refusal, over-refusal and CE under each intervention; writes the responses.

    Returns (the rows, seconds taken); ``([], 0.0)`` when measuring is off.
    """
    if not cfg.measure:
        return [], 0.0
    from tunelab.evaluate.benchmarks import passages
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts

    measure_started = time.perf_counter()
    harmful_eval = harmful_prompts(limit=cfg.eval_limit, split="test")
    benign_eval = benign_prompts(limit=cfg.eval_limit, seed=cfg.seed, split="test")
    texts = passages("heldout", cfg.ce_limit)
    interventions = {"baseline": (model, nullcontext), "ablation": (model, lambda: ablation(model, unit)),
                     "addition": (model, lambda: addition(model, raw, layer)),
                     "orthogonalized": (ortho, nullcontext)}
    rows, records = measure(model, tokenizer, interventions, harmful_eval, benign_eval, texts, judge=cfg.judging.make(),
                            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=progress)
    run_dir.write_text(RESPONSES_FILE, "".join(json.dumps(r) + "\n" for r in records))
    return rows, time.perf_counter() - measure_started


def run_refusal(cfg: RefusalConfig, run_dir: RunDir | None = None, *, model: Any = None, tokenizer: Any = None,
                progress: bool = True) -> RefusalDirectionResult:
    """Find, select and measure the refusal direction; write the results into ``run_dir`` (``None``:
    ``cfg.run_dir()``); return the :class:`RefusalDirectionResult` written as its ``metrics.json``.

    ``model``/``tokenizer``: an already loaded model (adapter merged) instead of loading ``cfg.model``;
    ``progress``: progress bars and step lines on stderr.
    """
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts

    cfg.validate()
    run_dir = run_dir or cfg.run_dir()
    harmful_sel = harmful_prompts(limit=cfg.harmful_limit, split="train")
    harmless_sel = benign_prompts(limit=cfg.harmless_limit, seed=cfg.seed, split="train")
    if model is None:
        from tunelab.inspect.run import load_for_inspect

        model, tokenizer = load_for_inspect(cfg.model, cfg.adapter)
    model.eval()
    started = time.perf_counter()
    geo = geometry(model)
    post = post_instruction_ids(tokenizer)
    k = len(post)
    positions, layers = _check_choices(cfg, geo.n_layers, k)
    pad = _pad_id(tokenizer)
    labels = [tokenizer.decode([t]) for t in post]
    override = token_ids(tokenizer, cfg.refusal_tokens) if cfg.refusal_tokens else None

    tokens, refusal_info = _refusal_tokens(cfg, model, tokenizer, harmful_sel, harmless_sel, override, progress)
    harmful_ids, harmless_ids, filtering, baseline = _selection_prompts(cfg, model, tokenizer, harmful_sel, harmless_sel,
                                                                        post, pad, tokens)

    # Candidates and their scores.
    candidates = candidate_directions(model, harmful_ids, harmless_ids, k, pad, batch_size=cfg.batch_size)
    scoring_started = time.perf_counter()
    scored = score_candidates(model, candidates, harmful_ids, harmless_ids, tokens, pad, positions=positions, layers=layers,
                              batch_size=cfg.batch_size, progress=progress)
    scoring_s = time.perf_counter() - scoring_started
    for row in scored:
        row["token"] = labels[k + row["position"]]
    choice = select(scored, geo.n_layers, kl_threshold=cfg.kl_threshold, steering_threshold=cfg.steering_threshold,
                    depth=cfg.depth)
    best = choice["selected"]
    raw = candidates[k + best["position"], best["layer"]].clone()
    unit = raw / raw.norm()
    selection_s = time.perf_counter() - started

    out = run_dir.path
    run_dir.open()
    meta = {"kind": KIND, "model": cfg.model, "adapter": cfg.adapter, "position": best["position"], "layer": best["layer"],
            "token": best["token"], "norm": float(raw.norm()), "refusal_tokens": refusal_info["tokens"]}
    direction_vector(unit, geo.n_layers,
                     meta={**meta, "normalized": True, "use": "ablate at every layer"}).save(run_dir.file(DIRECTION_FILE))
    direction_vector(raw, geo.n_layers, [best["layer"]],
                     meta={**meta, "normalized": False, "use": "add at resid_pre of its layer"}).save(run_dir.file(RAW_FILE))

    # The orthogonalized model and its agreement with ablation.
    ortho = orthogonalize(copy.deepcopy(model), unit)
    check_ids = harmful_ids[: min(4, len(harmful_ids))]
    with ablation(model, unit):
        ablated_logits = last_logits(model, check_ids, pad, batch_size=cfg.batch_size)
    ortho_gap = float((last_logits(ortho, check_ids, pad, batch_size=cfg.batch_size) - ablated_logits).abs().max())

    rows, measure_s = _measure_direction(cfg, model, tokenizer, ortho, unit, raw, best["layer"], run_dir, progress)
    exported = None
    if cfg.export:
        exported = str(export_orthogonalized(ortho, tokenizer, unit, cfg.export, copy_model=False, meta=meta))

    result = {"kind": KIND, "name": KIND, "model": cfg.model, "adapter": cfg.adapter, "n_layers": geo.n_layers,
              "post_instruction_tokens": labels,
              "selected": {"position": best["position"], "token": best["token"], "layer": best["layer"], "norm": float(raw.norm()),
                           "scores": {"refusal_score": best["refusal_score"], "steering_score": best["steering_score"],
                                      "kl": best["kl"]}},
              "filters_passed": choice["filters_passed"], "filter_reason": choice["reason"], "n_passed": choice["n_passed"],
              "filters": {"kl_threshold": cfg.kl_threshold, "steering_threshold": cfg.steering_threshold, "depth": cfg.depth,
                          "max_layer": int(geo.n_layers * cfg.depth) - 1},
              "candidates": [{key: c[key] for key in ("position", "token", "layer", "norm", "refusal_score", "steering_score",
                                                       "kl", "passed", "filtered_by")} for c in choice["candidates"]],
              "refusal_tokens": refusal_info, "prompt_filter": filtering, "baseline": baseline,
              "orthogonalized_max_logit_gap": ortho_gap, "rows": rows,
              "files": {"direction": DIRECTION_FILE, "raw": RAW_FILE, "plot": PLOT_FILE,
                        "responses": RESPONSES_FILE if cfg.measure else None, "export": exported},
              "timing": {"selection_s": selection_s, "scoring_s": scoring_s,
                         "per_candidate_s": scoring_s / max(1, sum(c["refusal_score"] is not None for c in scored)),
                         "measurement_s": measure_s},
              "wall_time_s": time.perf_counter() - started, "config": cfg.to_dict(), "output_dir": str(out)}
    plot_candidates(result, run_dir.file(PLOT_FILE))
    direction = RefusalDirectionResult.from_dict(result)
    direction.write(run_dir)
    return direction


def plot_candidates(result: dict[str, Any], path: str | Path) -> None:
    """Heatmaps layer × position of the ablated refusal score, the steering score and the KL; the
    selected candidate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = result["candidates"]
    positions = sorted({r["position"] for r in rows})
    layers = sorted({r["layer"] for r in rows})
    col = {p: i for i, p in enumerate(positions)}
    line = {layer: i for i, layer in enumerate(layers)}
    labels = [f"{p}\n{json.dumps(next(r['token'] for r in rows if r['position'] == p))[1:-1][:10]}" for p in positions]
    sel = result["selected"]
    panels = [("refusal_score", "refusal score, ablated on harmful (lower = better)", "viridis"),
              ("steering_score", "refusal score, added on harmless (> 0 passes)", "viridis"),
              ("kl", "KL on harmless, ablated (< threshold passes)", "magma")]
    fig, axes = plt.subplots(1, 3, figsize=(4.0 * 3, max(3.0, 1.4 + 0.18 * len(layers))), squeeze=False)
    for ax, (key, title, cmap) in zip(axes[0], panels):
        values = np.full((len(layers), len(positions)), np.nan)
        for r in rows:
            if r.get(key) is not None:
                values[line[r["layer"]], col[r["position"]]] = r[key]
        image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, interpolation="nearest", origin="lower")
        if sel["layer"] in line and sel["position"] in col:
            ax.scatter([col[sel["position"]]], [line[sel["layer"]]], marker="*", s=120, color="red", edgecolors="white")
        ax.set_xticks(range(len(positions)), labels, fontsize=7)
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=6)
        ax.set_xlabel("position (from the prompt's end)")
        ax.set_ylabel("layer (resid_pre)")
        ax.set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    state = "filters passed" if result["filters_passed"] else "no candidate passed the filters"
    fig.suptitle(f"refusal direction candidates: selected position {sel['position']}, layer {sel['layer']} ({state})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
