"""Known answer for the multi-turn drift harness (issue 26): answers that change at a planted rate.

Two levels:

* :func:`markov_fit` on correctness matrices simulated from a two-state chain with known p_TF,
  p_FT and first-turn accuracy must recover them within a few binomial standard errors; a chain
  that never flips gives p_TF = p_FT = 0 and no Acc∞ (with its reason), not a number.
* :func:`run_multiturn` itself, end to end on arc-easy with tiny-random: a forward hook replaces
  the logits so that the option the harness picks by log-likelihood follows a planted Markov chain
  on *the conversation the harness built*: the hook reads the question and the previous assistant
  answer from the rendered chat, and with probability p_TF (previous answer right) or p_FT
  (previous answer wrong) switches to a wrong / the right option, otherwise copies the previous
  answer. The harness's prompting, answer feedback, option scoring, correctness and fit must then
  give back exactly the planted picks and p_TF / p_FT / Acc∞ within sampling error. The matched
  control is the same hook with both rates 0 (copy the previous answer, what the 135M model did):
  no change, p_TF = p_FT = 0, no Acc∞.

Checked by hand to fail with the plant removed (hook not registered): no planted picks, and
tiny-random's own near-chance picks give accuracy 0.23 at turn 1 (planted 0.7), p_TF 0.155, p_FT 0.046.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tunelab.inspect.multiturn import (
    NO_TRANSITIONS, MultiTurnConfig, chain_metrics, markov_fit, multiturn_task, question_of, run_multiturn,
)
from tests.test_multiturn import simulate
from tunelab.results import RunDir

# SmolLM's chat template (tiny-random's tokenizer): the markers the hook parses the rendered conversation by.
USER, ASSISTANT, END = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"
Z = 5.0  # tolerance in standard errors: a deterministic test must not sit near its edge
BIG = 30.0  # logit of each planted option token (the rest 0): the planted option's log-likelihood ≈ 0


def binomial_se(p: float, visits: int) -> float:
    """SE of a transition probability estimated from ``visits`` departures from its state.

    For a Markov chain the pooled ratio TF / (TT + TF) is the MLE; its asymptotic variance is
    p(1 − p) / E[visits] (each departure is a Bernoulli(p) draw given the past).
    """
    return float(np.sqrt(p * (1 - p) / visits))


def acc_inf_se(p_tf: float, p_ft: float, se_tf: float, se_ft: float) -> float:
    """Delta-method SE of Acc∞ = p_FT / (p_TF + p_FT) (the two estimates are asymptotically independent)."""
    s = p_tf + p_ft
    return float(np.hypot(p_ft / s**2 * se_tf, p_tf / s**2 * se_ft))


def assert_recovered(fit: dict[str, Any], p_tf: float, p_ft: float, slack: float = 0.0) -> None:
    """p_TF, p_FT and Acc∞ of ``fit`` within Z standard errors (+ ``slack``) of the planted values."""
    pooled = fit["pooled"]
    from_t, from_f = pooled["TT"] + pooled["TF"], pooled["FT"] + pooled["FF"]
    se_tf, se_ft = binomial_se(p_tf, from_t), binomial_se(p_ft, from_f)
    # + 1/visits: at p ≈ 0 or 1 the SE vanishes while a single draw still moves the estimate by 1/visits
    assert abs(fit["p_tf"] - p_tf) <= Z * se_tf + 1 / from_t + slack, (fit["p_tf"], p_tf, se_tf)
    assert abs(fit["p_ft"] - p_ft) <= Z * se_ft + 1 / from_f + slack, (fit["p_ft"], p_ft, se_ft)
    tol = Z * acc_inf_se(p_tf, p_ft, se_tf + 1 / from_t, se_ft + 1 / from_f) + slack
    assert fit["acc_inf"] == pytest.approx(p_ft / (p_tf + p_ft), abs=tol)


# --------------------------------------------------------------------------- markov_fit on simulated chains


def test_markov_fit_recovers_a_planted_chain() -> None:
    """400 questions × 8 turns, p_TF 0.25, p_FT 0.15 (drift down from 0.7 to Acc∞ 0.375)."""
    fit = markov_fit(simulate(400, 8, a1=0.7, p_tf=0.25, p_ft=0.15, seed=1))
    assert_recovered(fit, 0.25, 0.15)
    assert fit["accuracy"][0] == pytest.approx(0.7, abs=Z * np.sqrt(0.7 * 0.3 / 400))
    assert np.allclose(fit["predicted"], fit["accuracy"], atol=Z * np.sqrt(0.25 / 400))  # the data are Markov


@given(p_tf=st.floats(0.02, 0.98), p_ft=st.floats(0.02, 0.98), a1=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_markov_fit_recovers_any_chain(p_tf: float, p_ft: float, a1: float, seed: int) -> None:
    """Over the rate ranges, the fit is within Z binomial SEs of the planted rates and Acc∞.

    Rates ≥ 0.02 keep both states visited (with a1 = 0 and p_FT = 0 there is no p_TF to estimate).
    """
    fit = markov_fit(simulate(400, 8, a1, p_tf, p_ft, seed))
    assert_recovered(fit, p_tf, p_ft)
    assert fit["acc_inf_reason"] is None


@pytest.mark.parametrize("a1", [0.0, 0.4, 1.0])
def test_a_chain_that_never_flips_has_no_drift_and_no_acc_inf(a1: float) -> None:
    """Control: p_TF = p_FT = 0 → the fit says 0 and 0 (or undefined for a state never visited),
    the accuracy and the prediction stay flat, and Acc∞ is None with its reason (every question
    keeps its first answer: there is no unique stationary accuracy), CIs included."""
    correct = simulate(400, 8, a1, 0.0, 0.0, seed=2)
    fit = chain_metrics(correct, np.zeros((400, 7), dtype=bool), n_boot=100, seed=0)
    assert fit["pooled"]["TF"] == fit["pooled"]["FT"] == 0
    assert fit["p_tf"] == (0.0 if a1 > 0 else None) and fit["p_ft"] == (0.0 if a1 < 1 else None)
    assert fit["acc_inf"] is None and fit["acc_inf_ci"] is None
    if 0 < a1 < 1:
        assert fit["acc_inf_reason"] == NO_TRANSITIONS
    else:
        assert "undefined" in fit["acc_inf_reason"]
    assert len(set(fit["accuracy"])) == 1 and fit["predicted"] == pytest.approx(fit["accuracy"])
    assert fit["change_rate"] == [0.0] * 7


# --------------------------------------------------------------------------- the harness end to end

TURNS = 8
A1, P_TF, P_FT = 0.7, 0.25, 0.15  # the paper's direction: accuracy drifts down to Acc∞ 0.375
COLOURS = ["red", "blue", "green", "yellow"]  # one token each in SmolLM's vocabulary


def colour_task(path: Path, n: int) -> str:
    """A multiple-choice task file: n questions of equal token length, single-token options.

    Equal lengths keep the option scorer's batches free of padding and its kept logits to one
    position per row: with tiny-random's 49k vocabulary the LM head and the log-softmax are
    nearly all of the cost (arc-easy's 160 questions take ~40 s of CPU, this file's 400 a few).
    """
    rng = np.random.default_rng(5)
    rows = [{"prompt": f"Question {i:03d}: which colour is it?\nAnswer:", "choices": COLOURS, "answer": int(rng.integers(4))}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


class PlantedChain:
    """A forward hook that makes the harness's option scores pick a planted Markov chain.

    On each forward of context + option rows (the harness's option log-likelihoods), the hook
    parses each row's rendered chat: the question (first user message), the previous assistant
    answers and the option being scored. The planted pick of question q at turn t depends only on
    the previous answer and a draw seeded by (seed, q, t): every option row of a question agrees.
    The picked option's tokens get logit BIG at the positions that predict them, every other
    logit is 0, so the picked option has the highest log-likelihood.
    """

    def __init__(self, tokenizer: Any, records: list[dict[str, Any]], a1: float, p_tf: float, p_ft: float, seed: int = 0):
        self.tokenizer, self.records, self.a1, self.p_tf, self.p_ft, self.seed = tokenizer, records, a1, p_tf, p_ft, seed
        self.by_question = {question_of(r, "planted")[1]: q for q, r in enumerate(records)}
        assert len(self.by_question) == len(records), "the sample must not repeat a question"
        self.picks: dict[tuple[int, int], int] = {}  # (question, turn) -> planted option

    def pick(self, q: int, turn: int, previous: str | None) -> int:
        record = self.records[q]
        right, choices = record["answer"], record["choices"]
        wrong = [j for j in range(len(choices)) if j != right]
        rng = np.random.default_rng([self.seed, q, turn])
        u, w = rng.random(), wrong[int(rng.integers(len(wrong)))]
        if previous is None:  # the first answer
            chosen = right if u < self.a1 else w
        else:
            assert previous in choices, f"the harness fed back {previous!r}, not an option"
            before = choices.index(previous)
            if before == right:
                chosen = w if u < self.p_tf else before
            else:
                chosen = right if u < self.p_ft else before  # stay wrong: copy the previous answer
        assert self.picks.setdefault((q, turn), chosen) == chosen  # every row of (q, turn) agrees
        return chosen

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        keep = kwargs.get("logits_to_keep")
        assert isinstance(keep, torch.Tensor), "the plant expects the option scorer's forward"
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        logits = torch.zeros_like(output.logits)
        first = int(keep[0])
        for row in range(ids.shape[0]):
            length = int(mask[row].sum())
            text = self.tokenizer.decode(ids[row, :length])
            head, option = text.rsplit(ASSISTANT, 1)
            question = head.split(USER, 1)[1].split(END, 1)[0]
            previous = [seg.split(END, 1)[0] for seg in head.split(ASSISTANT)[1:]]
            q = self.by_question[question]
            chosen = self.pick(q, len(previous) + 1, previous[-1] if previous else None)
            if self.records[q]["choices"].index(option) == chosen:
                cont = self.tokenizer(option, add_special_tokens=False)["input_ids"]
                ctx = length - len(cont)
                for k, token in enumerate(cont):  # position ctx − 1 + k predicts option token k
                    logits[row, ctx - 1 + k - first, token] = BIG
        output.logits = logits.to(output.logits.dtype)
        return output

    def matrix(self) -> np.ndarray:
        """``[questions × turns]`` planted picks."""
        return np.array([[self.picks[q, t] for t in range(1, TURNS + 1)] for q in range(len(self.records))])


@contextmanager
def planted(model: Any, plant: PlantedChain | None) -> Iterator[None]:
    """The hook on the model's forward while inside (``None``: no plant)."""
    handle = model.register_forward_hook(plant, with_kwargs=True) if plant is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


# The default suite runs the colour file (400 questions); arc-easy (the 135M experiment's task,
# 160 questions, multi-token options) is the same check on real records, marked slow.
TASKS = [pytest.param("colours", 400, id="colours"),
         pytest.param("arc-easy", 160, id="arc-easy", marks=pytest.mark.slow)]


def _run(tiny, tmp_path: Path, task: str, n: int, p_tf: float, p_ft: float,
         on: bool = True) -> tuple[Any, list[dict[str, Any]], PlantedChain]:
    """``run_multiturn`` on ``n`` questions of ``task`` with the plant (rates p_tf, p_ft) hooked in."""
    model, tokenizer = tiny
    name, scorer = (colour_task(tmp_path / "colours.jsonl", n), "choice") if task == "colours" else (task, None)
    cfg = MultiTurnConfig(model="tiny-random", task=name, scorer=scorer, limit=n, turns=TURNS, layers=[1],
                          batch_size=64, bootstrap=200, output=str(tmp_path / "unused"))
    _, records = multiturn_task(cfg)
    plant = PlantedChain(tokenizer, records, A1, p_tf, p_ft)
    with planted(model, plant if on else None):
        result = run_multiturn(cfg, RunDir(tmp_path / "mt"), model=model, tokenizer=tokenizer, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "mt" / "turns.jsonl").read_text().splitlines()]
    return result, rows, plant


@pytest.mark.parametrize("task, n", TASKS)
def test_run_multiturn_recovers_planted_drift(tiny, tmp_path: Path, task: str, n: int) -> None:
    """The harness's picks are the planted ones, and its fit gives back p_TF, p_FT, Acc∞."""
    result, rows, plant = _run(tiny, tmp_path, task, n, P_TF, P_FT)
    picks = plant.matrix()
    answers = np.array([r["answer"] for r in rows])
    truth = picks == answers[:, None]
    pooled = result.transitions["pooled"]
    print(f"multi-turn KA ({task}, n={n}): accuracy {[round(a, 3) for a in result.accuracy]}; "
          f"p_TF {result.p_tf:.3f} {result.p_tf_ci} (planted {P_TF}), p_FT {result.p_ft:.3f} {result.p_ft_ci} "
          f"(planted {P_FT}), Acc∞ {result.acc_inf:.3f} {result.acc_inf_ci} (planted {P_FT / (P_TF + P_FT):.3f}); "
          f"transitions {pooled}; change rate {[round(c, 3) for c in result.change_rate]}; "
          f"probe {result.probe} baseline {result.baseline_auroc}")
    # exact: the harness picked, fed back and scored exactly the planted answers
    assert np.array_equal(np.array([r["picks"] for r in rows]), picks)
    assert np.array_equal(np.array([r["correct"] for r in rows]), truth)
    assert result.accuracy == pytest.approx(truth.mean(0).tolist())
    # statistical: the fit recovers the planted chain
    fit = {"pooled": pooled, "p_tf": result.p_tf, "p_ft": result.p_ft, "acc_inf": result.acc_inf}
    assert_recovered(fit, P_TF, P_FT)
    assert result.accuracy[0] == pytest.approx(A1, abs=Z * np.sqrt(A1 * (1 - A1) / n))
    for value, ci in [(P_TF, result.p_tf_ci), (P_FT, result.p_ft_ci), (P_FT / (P_TF + P_FT), result.acc_inf_ci)]:
        assert ci is not None and ci[0] <= value <= ci[1]  # the harness's bootstrap CIs cover the truth
    assert result.accuracy[-1] < result.accuracy[0] - 0.15  # the planted drift is visible
    assert result.probe_changes > 0 and result.probe_reason is None


@pytest.mark.parametrize("task, n", [pytest.param("colours", 100, id="colours"), TASKS[1]])  # no statistics: 100 do
def test_run_multiturn_control_copies_and_finds_no_drift(tiny, tmp_path: Path, task: str, n: int) -> None:
    """Control: the same plant with both rates 0 (copy the previous answer): no change at all."""
    result, rows, plant = _run(tiny, tmp_path, task, n, 0.0, 0.0)
    assert np.array_equal(np.array([r["picks"] for r in rows]), plant.matrix())
    assert all(len(set(r["picks"])) == 1 for r in rows)
    assert result.transitions["pooled"]["TF"] == result.transitions["pooled"]["FT"] == 0
    assert result.p_tf == 0 and result.p_ft == 0 and result.change_rate == [0.0] * (TURNS - 1)
    assert len(set(result.accuracy)) == 1 and result.markov_prediction == pytest.approx(result.accuracy)
    assert result.acc_inf is None and result.acc_inf_reason == NO_TRANSITIONS and result.acc_inf_ci is None
    assert result.probe_changes == 0 and result.probe_reason == "no answer changes"
