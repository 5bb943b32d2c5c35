"""``tunelab audit multi-turn``: does the model keep its answer when asked to "Think again."?

A question is asked, the model answers, and a follow-up ("Think again.", optionally restating the
question) is repeated for ``turns`` turns; every answer is scored. Multiple-choice tasks answer by
option log-likelihood (the option scored as the assistant's reply, no sampling); text-scored
tasks (``arithmetic``, ``reverse_words``) answer by greedy generation.

Correctness over turns is modelled as a two-state Markov chain over {correct, wrong}:
``p_TF`` / ``p_FT`` pooled over turns, the predicted curve ``a_{t+1} = a_t(1 − p_TF) +
(1 − a_t)p_FT`` from the measured first turn, and the stationary accuracy ``Acc∞ = p_FT /
(p_TF + p_FT)``, all with bootstrap CIs over questions. A logistic-regression probe on the
residual stream at the last prompt token (the end of the generation prompt) predicts whether the
next turn changes the answer; grouped cross-validation by question, AUROC per layer, against a
baseline that knows only the turn index.

Output (``--output``, else ``ADAPTER/inspect/multiturn-TASK`` or
``runs/inspect/multiturn-MODEL-TASK``): ``metrics.json`` (kind ``multi-turn``), ``multiturn.png``
and ``turns.jsonl`` (per question: answers and correctness per turn).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.inspect.results import MultiTurnResult
from tunelab.results import RunDir

Messages = list[dict[str, str]]

# ``--reword``: the follow-up also restates the question, through these templates in turn.
REWORDINGS = (
    "Here is the question once more: {question}",
    "Let me ask again: {question}",
    "Read the question carefully and answer it again: {question}",
)
MIN_CLASS = 5  # fewest answer changes (and non-changes) a probe is fitted on
NO_TRANSITIONS = "no transitions between correct and wrong: the chain has no unique stationary accuracy"


# the config lives in a light module (the CLI builds its flags from it at import)
from tunelab.inspect.multiturn_config import MultiTurnConfig  # noqa: E402,F401 (re-exported)


def probe_layers(layers: list[int] | None, n_layers: int) -> list[int]:
    """The probe layers, checked against the model's layer count (default: every 3rd plus the last)."""
    if layers is None:
        return sorted(set(range(0, n_layers, 3)) | {n_layers - 1})
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise TunelabError(f"--layers: layer {layer} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    return sorted(set(layers))


# --------------------------------------------------------------------------- conversation

def question_of(record: dict[str, Any], task: str) -> tuple[Messages, str]:
    """(the first turn's messages, the question text) of a task record.

    Benchmark records carry one prompt per option; they must all be the same question (WinoGrande
    fills the blank differently per option, so there is no single question to ask again).
    """
    prompts = record.get("prompts")
    if prompts is not None and any(p != prompts[0] for p in prompts):
        raise TunelabError(f"task '{task}' fills each option into its own context (as WinoGrande's blanks); "
                           "multi-turn needs one question per record")
    prompt = record["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    return messages, messages[-1]["content"]


def follow_up_text(follow_up: str, index: int, question: str, reword: bool) -> str:
    """The ``index``-th follow-up (0: the one after the first answer); ``reword`` restates the question."""
    if not reword:
        return follow_up
    return f"{follow_up} {REWORDINGS[index % len(REWORDINGS)].format(question=question)}"


def conversation(first: Messages, question: str, answers: Sequence[str], follow_up: str, reword: bool) -> Messages:
    """The prompt of turn ``len(answers) + 1``: the question, then each answer and a follow-up."""
    messages = [dict(m) for m in first]
    for k, answer in enumerate(answers):
        messages += [{"role": "assistant", "content": answer},
                     {"role": "user", "content": follow_up_text(follow_up, k, question, reword)}]
    return messages


# --------------------------------------------------------------------------- the Markov chain (pure)

def transition_counts(correct: np.ndarray) -> np.ndarray:
    """``[turns − 1, 4]`` counts of TT, TF, FT, FF from turn t to t + 1 (rows: questions)."""
    c = np.asarray(correct, dtype=bool)
    prev, nxt = c[:, :-1], c[:, 1:]
    return np.stack([(prev & nxt).sum(0), (prev & ~nxt).sum(0), (~prev & nxt).sum(0), (~prev & ~nxt).sum(0)], axis=1)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def stationary_accuracy(p_tf: float | None, p_ft: float | None) -> tuple[float | None, str | None]:
    """(Acc∞ = p_FT / (p_TF + p_FT), None) or (None, why it is undefined)."""
    if p_tf is None:
        return None, "no question was correct before the last turn, so p_TF is undefined"
    if p_ft is None:
        return None, "no question was wrong before the last turn, so p_FT is undefined"
    if p_tf + p_ft == 0:
        return None, NO_TRANSITIONS
    return p_ft / (p_tf + p_ft), None


def markov_curve(a1: float, p_tf: float | None, p_ft: float | None, turns: int) -> list[float]:
    """``a_{t+1} = a_t(1 − p_TF) + (1 − a_t)p_FT`` from ``a1`` for ``turns`` turns.

    An undefined probability (its state never visited before the last turn) counts as 0.
    """
    tf, ft = p_tf or 0.0, p_ft or 0.0
    curve = [float(a1)]
    for _ in range(turns - 1):
        a = curve[-1]
        curve.append(a * (1 - tf) + (1 - a) * ft)
    return curve


def markov_fit(correct: np.ndarray) -> dict[str, Any]:
    """Per-turn accuracy, transitions, pooled p_TF / p_FT, Acc∞ and the predicted curve.

    ``correct`` is a ``[questions × turns]`` bool matrix.
    """
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 2:
        raise TunelabError(f"markov_fit needs a [questions × turns] matrix with >= 1 question and >= 2 turns, got {c.shape}")
    counts = transition_counts(c)
    tt, tf, ft, ff = (int(x) for x in counts.sum(0))
    p_tf, p_ft = _ratio(tf, tt + tf), _ratio(ft, ft + ff)
    acc_inf, reason = stationary_accuracy(p_tf, p_ft)
    accuracy = [float(x) for x in c.mean(0)]
    names = ("TT", "TF", "FT", "FF")
    return {
        "n": int(c.shape[0]), "turns": int(c.shape[1]), "accuracy": accuracy,
        "transitions": [{"from_turn": t + 1, "to_turn": t + 2, **{k: int(v) for k, v in zip(names, row)}}
                        for t, row in enumerate(counts)],
        "pooled": {"TT": tt, "TF": tf, "FT": ft, "FF": ff},
        "p_tf": p_tf, "p_ft": p_ft, "acc_inf": acc_inf, "acc_inf_reason": reason,
        "predicted": markov_curve(accuracy[0], p_tf, p_ft, c.shape[1]),
    }


def chain_statistics(correct: np.ndarray) -> np.ndarray:
    """``[accuracy per turn..., p_TF, p_FT, Acc∞]`` with NaN where undefined (the bootstrap's statistic)."""
    c = np.asarray(correct, dtype=bool)
    tt, tf, ft, ff = transition_counts(c).sum(0)
    p_tf = tf / (tt + tf) if tt + tf else np.nan
    p_ft = ft / (ft + ff) if ft + ff else np.nan
    acc_inf = p_ft / (p_tf + p_ft) if np.isfinite(p_tf + p_ft) and p_tf + p_ft > 0 else np.nan
    return np.concatenate([c.mean(0), [p_tf, p_ft, acc_inf]])


def bootstrap_ci(rows: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> np.ndarray:
    """Percentile intervals ``[k, 2]`` of the vector ``stat(rows[sample])`` over ``n_boot`` resamples of rows.

    Rows are questions: resampling them keeps each question's turns together. A resample where a
    statistic is undefined (NaN) is left out of that statistic's interval; NaN when none is left.
    """
    rows = np.asarray(rows)
    rng = np.random.default_rng(seed)
    draws = np.array([stat(rows[rng.integers(0, len(rows), len(rows))]) for _ in range(n_boot)], dtype=float)
    if draws.ndim == 1:
        draws = draws[:, None]
    tail = 100 * (1 - level) / 2
    out = np.full((draws.shape[1], 2), np.nan)
    for k in range(draws.shape[1]):
        column = draws[:, k][np.isfinite(draws[:, k])]
        if column.size:
            out[k] = np.percentile(column, [tail, 100 - tail])
    return out


def answer_changes(answers: Sequence[Sequence[Hashable]]) -> np.ndarray:
    """``[questions × (turns − 1)]``: the answer at turn t + 1 differs from turn t's."""
    return np.array([[a != b for a, b in pairwise(row)] for row in answers], dtype=bool).reshape(len(answers), -1)


def _ci(row: np.ndarray) -> list[float] | None:
    return [float(row[0]), float(row[1])] if np.all(np.isfinite(row)) else None


def chain_metrics(correct: np.ndarray, changes: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """:func:`markov_fit` plus bootstrap CIs (seeded) and the per-turn answer-change rate."""
    fit = markov_fit(correct)
    turns = fit["turns"]
    ci = bootstrap_ci(correct, chain_statistics, n_boot=n_boot, seed=seed) if n_boot else np.full((turns + 3, 2), np.nan)
    fit["accuracy_ci"] = [_ci(r) for r in ci[:turns]]
    fit["p_tf_ci"], fit["p_ft_ci"], fit["acc_inf_ci"] = (_ci(r) for r in ci[turns:])
    fit["change_rate"] = [float(x) for x in np.asarray(changes, dtype=float).mean(0)]
    return fit


# --------------------------------------------------------------------------- the probe (pure)

def _oof_probabilities(x: np.ndarray, y: np.ndarray, groups: np.ndarray, standardize: bool) -> np.ndarray:
    """Out-of-fold P(change) from a logistic regression, folds grouped by question."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.empty(len(y))
    for train, test in GroupKFold(n_splits=min(5, len(np.unique(groups)))).split(x, y, groups):
        if len(np.unique(y[train])) < 2:  # a fold without both classes: its base rate is all it knows
            out[test] = y[train].mean()
            continue
        steps = [StandardScaler()] if standardize else []
        model = make_pipeline(*steps, LogisticRegression(max_iter=5000))
        out[test] = model.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return out


def probe_auroc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, standardize: bool = True) -> tuple[float | None, str | None]:
    """(AUROC of out-of-fold predictions, None), or (None, why there is none)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=int)
    if y.sum() == 0:
        return None, "no answer changes"
    if y.sum() == len(y):
        return None, "every follow-up changed the answer"
    if min(y.sum(), len(y) - y.sum()) < MIN_CLASS:
        # A handful of changes gives an AUROC that is mostly noise (2 changes: 0.33-0.61 across layers).
        return None, f"only {min(y.sum(), len(y) - y.sum())} follow-ups in the rarer class (a probe needs {MIN_CLASS})"
    if len(np.unique(groups)) < 2:
        return None, "needs at least 2 questions for grouped cross-validation"
    return float(roc_auc_score(y, _oof_probabilities(np.asarray(x, dtype=float), y, np.asarray(groups), standardize))), None


def turn_features(turn: np.ndarray, turns: int) -> np.ndarray:
    """One-hot turn index: the baseline knows which turn it is and nothing else."""
    return np.eye(turns)[np.asarray(turn, dtype=int) - 1]


def probe_metrics(features: torch.Tensor, changes: np.ndarray, layers: list[int]) -> dict[str, Any]:
    """AUROC per layer of predicting a change from the residual, and of the turn-index baseline.

    ``features[q, t, l]`` is the residual of question q at turn t + 1's last prompt token at
    ``layers[l]``; ``changes[q, t]`` whether turn t + 2 changed the answer.
    """
    n, steps = changes.shape
    y = changes.reshape(-1).astype(int)
    groups = np.repeat(np.arange(n), steps)
    turn = np.tile(np.arange(1, steps + 1), n)
    x = features.float().numpy().reshape(n * steps, len(layers), -1)
    auroc = {}
    reason = None
    for k, layer in enumerate(layers):
        auroc[str(layer)], reason = probe_auroc(x[:, k], y, groups)
    baseline, base_reason = probe_auroc(turn_features(turn, steps), y, groups, standardize=False)
    return {"probe": auroc, "baseline_auroc": baseline, "probe_reason": reason or base_reason,
            "probe_examples": len(y), "probe_changes": int(y.sum()), "probe_layers": layers}


# --------------------------------------------------------------------------- running the turns

@dataclass
class TurnAnswers:
    """One turn's answers: the assistant's text, what counts as the same answer, correctness, residuals."""

    texts: list[str]
    keys: list[Hashable]
    correct: list[bool]
    residuals: torch.Tensor | None  # [questions, layers, hidden] at the last prompt token


def _choice_turn(model: Any, tokenizer: Any, prompts: list[Messages], records: list[dict[str, Any]],
                 layers: list[int] | None, cfg: MultiTurnConfig) -> TurnAnswers:
    """Each question's option with the highest log-likelihood as the reply; residuals from the same forward."""
    from tunelab.evaluate.scorers import (
        choice_pairs,
        nest_pair_scores,
        pair_loglikelihoods,
        pick_choice,
    )
    from tunelab.inspect.hooks import record

    choices = [r["choices"] for r in records]
    pairs = choice_pairs(tokenizer, prompts, choices, chat=True)
    residuals: torch.Tensor | None = None

    def forward(batch: list[int], ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        nonlocal residuals
        with record(model, "resid_post", layers) as rec:
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        for row, k in enumerate(batch):
            i, j, ctx, _ = pairs[k]
            if j == 0:  # every option shares the context; causal attention: option tokens don't change it
                got = torch.stack([rec[layer, "resid_post"][row, len(ctx) - 1] for layer in layers]).float().cpu()
                if residuals is None:
                    residuals = torch.zeros(len(prompts), *got.shape)
                residuals[i] = got
        return logits

    flat = pair_loglikelihoods(model, tokenizer, pairs, batch_size=cfg.batch_size, bf16=cfg.bf16,
                               forward=forward if layers else None)
    picks = [pick_choice(s, c) for s, c in zip(nest_pair_scores(pairs, flat, choices), choices)]
    return TurnAnswers([c[p] for c, p in zip(choices, picks)], list(picks),
                       [p == r["answer"] for p, r in zip(picks, records)], residuals)


@torch.inference_mode()
def prompt_residuals(model: Any, tokenizer: Any, prompts: list[Messages], layers: list[int], batch_size: int,
                     bf16: bool = False) -> torch.Tensor:
    """``[prompts, layers, hidden]``: ``resid_post`` at the last token of each chat-rendered prompt."""
    from contextlib import nullcontext

    from tunelab.evaluate.generation import render_prompts
    from tunelab.inspect.hooks import model_device, record

    # As generation encodes chat prompts: the template writes the special tokens itself.
    encoded = tokenizer(render_prompts(tokenizer, prompts, chat=True), add_special_tokens=False)["input_ids"]
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: torch.Tensor | None = None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):  # right padding: positions 0.. are those of the unpadded prompt
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        with autocast, record(model, "resid_post", layers) as rec:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
        last = torch.tensor([len(encoded[i]) - 1 for i in idx], device=device)
        got = torch.stack([rec[layer, "resid_post"][torch.arange(len(idx), device=device), last] for layer in layers], 1)
        if out is None:
            out = torch.zeros(len(prompts), len(layers), got.shape[-1])
        out[idx] = got.float().cpu()
    assert out is not None
    return out


def _generation_turn(model: Any, tokenizer: Any, prompts: list[Messages], records: list[dict[str, Any]],
                     layers: list[int] | None, cfg: MultiTurnConfig, score: Callable[[str, str], float]) -> TurnAnswers:
    """Greedy replies scored by the task's text scorer; residuals from a prompt-only forward."""
    from tunelab.evaluate.generation import generate
    from tunelab.tasks.base import normalize_text

    # progress=False: rich allows one live display, and the turn bar is already showing.
    texts = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                     bf16=cfg.bf16, progress=False)
    residuals = prompt_residuals(model, tokenizer, prompts, layers, cfg.batch_size, cfg.bf16) if layers else None
    return TurnAnswers(texts, [normalize_text(t) for t in texts],
                       [score(t, r["response"]) >= 0.5 for t, r in zip(texts, records)], residuals)


def multiturn_task(cfg: MultiTurnConfig) -> tuple[Any, list[dict[str, Any]]]:
    """The task and its records; a one-line error for tasks a conversation can't score."""
    from tunelab.evaluate.scorers import get_scorer
    from tunelab.evaluate.tasks import resolve_task

    task = resolve_task(cfg.task, cfg.scorer)
    kind = get_scorer(task.scorer).kind
    if kind not in ("choice", "text"):
        raise TunelabError(f"task '{cfg.task}' is scored by '{task.scorer}'; multi-turn needs a multiple-choice "
                           "or text-scored task (a benchmark, arithmetic, reverse_words)")
    records = task.load(cfg.limit, cfg.seed)
    if not records:
        raise TunelabError(f"task '{cfg.task}' has no records")
    for r in records:
        question_of(r, cfg.task)  # refuses per-option contexts before any model is loaded
    return task, records


def run_turns(model: Any, tokenizer: Any, task: Any, records: list[dict[str, Any]], layers: list[int],
              cfg: MultiTurnConfig, progress: bool = True) -> list[TurnAnswers]:
    """Ask, answer, follow up, ``cfg.turns`` times; each turn batched over all questions."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from tunelab.evaluate.scorers import get_scorer

    scorer = get_scorer(task.scorer)
    firsts = [question_of(r, cfg.task) for r in records]
    turns: list[TurnAnswers] = []
    columns = (TextColumn("multi-turn {task.fields[what]}"), BarColumn(), MofNCompleteColumn(), TextColumn("turns"),
               TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        job = bar.add_task("turns", total=cfg.turns, what=cfg.task)
        for t in range(cfg.turns):
            prompts = [conversation(first, question, [turn.texts[i] for turn in turns], cfg.follow_up, cfg.reword)
                       for i, (first, question) in enumerate(firsts)]
            wanted = layers if t < cfg.turns - 1 else None  # the last turn has no next answer to predict
            if scorer.kind == "choice":
                turns.append(_choice_turn(model, tokenizer, prompts, records, wanted, cfg))
            else:
                assert scorer.text is not None
                turns.append(_generation_turn(model, tokenizer, prompts, records, wanted, cfg, scorer.text))
            bar.update(job, advance=1)
    return turns


# --------------------------------------------------------------------------- results

def plot_multiturn(result: dict[str, Any], path: Path) -> None:
    """Accuracy per turn (CI band), the Markov prediction and Acc∞; probe AUROC by layer vs the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = list(range(1, result["turns"] + 1))
    left.plot(x, result["accuracy"], marker="o", color="C0", label="measured")
    cis = result["accuracy_ci"]
    if all(ci is not None for ci in cis):
        left.fill_between(x, [c[0] for c in cis], [c[1] for c in cis], color="C0", alpha=0.2, label="95% CI")
    left.plot(x, result["markov_prediction"], linestyle="--", color="C1", label="Markov prediction")
    if result["acc_inf"] is not None:
        left.axhline(result["acc_inf"], color="C2", linewidth=1, label=f"Acc∞ = {result['acc_inf']:.3f}")
    left.set(xlabel="turn", ylabel="accuracy", title=f"{result['task']}: accuracy per turn (n={result['n']})", ylim=(0, 1))
    left.set_xticks(x)
    left.legend(fontsize=8)
    scored = [(int(k), v) for k, v in result["probe"].items() if v is not None]
    if scored:
        right.plot([k for k, _ in scored], [v for _, v in scored], marker="o", color="C3", label="residual probe")
    if result["baseline_auroc"] is not None:
        right.axhline(result["baseline_auroc"], color="grey", linestyle="--", label="turn index only")
    right.axhline(0.5, color="black", linewidth=0.6, linestyle=":", label="chance")
    if not scored:
        right.text(0.5, 0.6, f"no AUROC: {result.get('probe_reason') or 'nothing to probe'}", ha="center",
                   transform=right.transAxes)
    right.set(xlabel="layer", ylabel="AUROC (grouped CV)", title="does the next turn change the answer?", ylim=(0, 1))
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _turn_rows(records: list[dict[str, Any]], turns: list[TurnAnswers], task: str) -> str:
    rows = []
    for i, r in enumerate(records):
        row: dict[str, Any] = {"id": r.get("id", f"{task}/{i}"), "answers": [t.texts[i] for t in turns],
                               "correct": [bool(t.correct[i]) for t in turns]}
        if "choices" in r:
            row["picks"] = [int(t.keys[i]) for t in turns]
            row["answer"] = r["answer"]
        rows.append(row)
    return "".join(json.dumps(row) + "\n" for row in rows)


def run_multiturn(cfg: MultiTurnConfig, run_dir: RunDir | None = None, *, model: Any = None, tokenizer: Any = None,
                  progress: bool = True) -> MultiTurnResult:
    """Run the conversations, fit the chain, probe the residuals; write metrics.json, multiturn.png and
    turns.jsonl into ``run_dir`` (``None``: ``cfg.run_dir()``); return the :class:`MultiTurnResult` written.

    ``model``/``tokenizer``: an already loaded model (adapter merged) instead of loading ``cfg.model``.
    """
    from tunelab.inspect.hooks import geometry
    from tunelab.inspect.run import load_for_inspect

    cfg.validate()
    run_dir = run_dir or cfg.run_dir()
    task, records = multiturn_task(cfg)
    if model is None:
        model, tokenizer = load_for_inspect(cfg.model, cfg.adapter)
    layers = probe_layers(cfg.layers, geometry(model).n_layers)
    started = time.perf_counter()
    turns = run_turns(model, tokenizer, task, records, layers, cfg, progress)
    correct = np.array([t.correct for t in turns], dtype=bool).T
    changes = answer_changes([[t.keys[i] for t in turns] for i in range(len(records))])
    chain = chain_metrics(correct, changes, cfg.bootstrap, cfg.seed)
    features = torch.stack([t.residuals for t in turns[:-1] if t.residuals is not None], dim=1)
    out = run_dir.path
    result = {
        "kind": "multi-turn", "name": "multi-turn", "task": cfg.task, "model": cfg.model, "adapter": cfg.adapter,
        "scoring": "option log-likelihood" if task.scorer == "choice" else f"greedy generation, scorer {task.scorer}",
        "n": len(records), "turns": cfg.turns, "follow_up": cfg.follow_up, "reword": cfg.reword,
        "accuracy": chain["accuracy"], "accuracy_ci": chain["accuracy_ci"], "markov_prediction": chain["predicted"],
        "p_tf": chain["p_tf"], "p_tf_ci": chain["p_tf_ci"], "p_ft": chain["p_ft"], "p_ft_ci": chain["p_ft_ci"],
        "acc_inf": chain["acc_inf"], "acc_inf_ci": chain["acc_inf_ci"], "acc_inf_reason": chain["acc_inf_reason"],
        "transitions": {"per_turn": chain["transitions"], "pooled": chain["pooled"]}, "change_rate": chain["change_rate"],
        **probe_metrics(features, changes, layers), "bootstrap": cfg.bootstrap,
        "wall_time_s": time.perf_counter() - started, "config": asdict(cfg), "output_dir": str(out),
    }
    run_dir.open()
    run_dir.write_text("turns.jsonl", _turn_rows(records, turns, cfg.task))
    plot_multiturn(result, run_dir.file("multiturn.png"))
    multiturn = MultiTurnResult.from_dict(result)
    multiturn.write(run_dir)
    return multiturn
