"""Known answer for the refusal direction (issue 26): a model whose refusals are *caused* by one
planted direction ``v``; tunelab's :func:`run_refusal` must recover ``v`` and ablating it must
remove the refusals, while a random direction must not, and the unplanted model has none to find.

The plant, on tiny-random (2 layers, hidden 64):

* **write**: on every forward whose input contains a harmful prompt (HarmBench, matched on the
  prompt's text), ``ALPHA · v̂`` is added to block 0's output, i.e. ``resid_pre`` of layer 1, at
  every position of those rows (a hook; the class oracle is text matching, the mechanism is the
  direction);
* **read**: the LM head's row of the token ``"I"`` (untied) gets ``+BETA · v̂``, so the logit of
  "I" grows with the final residual's component along ``v̂``: planted rows open with "I".

"I…" counts as a refusal (``is_refusal`` patched, as in tests/test_refusal_direction.py), and the
harness's own measure is its refusal score (log-odds of the refusal tokens at the last position).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.inspect import refusal
from tunelab.inspect.refusal import (
    NO_REFUSALS, RefusalConfig, ablation, candidate_directions, encode_prompts, last_logits, post_instruction_ids,
    refusal_score, run_refusal,
)
from tunelab.inspect.steering import SteeringVector
from tunelab.results import RunDir

ALPHA = 40.0  # planted norm at resid_pre of layer 1 (the residual there has norm ~8)
BETA = 12.0  # read-out gain of the "I" logit along v̂
N_PROMPTS = 12


def _unit(seed: int, size: int) -> torch.Tensor:
    v = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@pytest.fixture(scope="module")
def setup(tiny) -> dict[str, Any]:
    """A copy of tiny-random with the read-out baked in, the planted unit direction and the prompts."""
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts

    model, tokenizer = tiny
    model = copy.deepcopy(model)
    v = _unit(11, model.config.hidden_size)
    i_token = tokenizer.convert_tokens_to_ids("I")
    head = model.lm_head
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())  # untie
    model.config.tie_word_embeddings = False
    with torch.no_grad():
        head.weight[i_token] += BETA * v * head.weight.norm(dim=-1).mean()
    # The oracle knows every harmful prompt (both splits); a row is harmful when its text ends one.
    tails = [p["prompt"][-24:] for p in harmful_prompts(split="all")]
    return {"model": model, "tokenizer": tokenizer, "v": v, "tails": tails, "i_token": i_token,
            "harmful": harmful_prompts(limit=N_PROMPTS, split="train"),
            "harmless": benign_prompts(limit=N_PROMPTS, seed=0, split="train")}


@contextmanager
def planted(setup: dict[str, Any], on: bool = True) -> Iterator[None]:
    """Add ``ALPHA · v̂`` after block 0 for rows holding a harmful prompt (``on=False``: nothing)."""
    model, tokenizer, v, tails = setup["model"], setup["tokenizer"], setup["v"], setup["tails"]
    flags: dict[str, torch.Tensor | None] = {"rows": None}

    def classify(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        texts = tokenizer.batch_decode(ids) if ids is not None else []
        flags["rows"] = torch.tensor([any(t in text for t in tails) for text in texts], dtype=torch.bool)

    def write(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        rows = flags["rows"]
        if rows is not None and rows.any() and rows.numel() == hidden.shape[0]:
            hidden = hidden + (ALPHA * rows.to(hidden.dtype))[:, None, None] * v.to(hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handles = []
    if on:
        handles = [model.register_forward_pre_hook(classify, with_kwargs=True),
                   model.model.layers[0].register_forward_hook(write)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _scores(setup: dict[str, Any], prompts: list[dict[str, str]], direction: torch.Tensor | None = None) -> torch.Tensor:
    """The harness's refusal score (tokens: "I") of ``prompts``, optionally with ``direction`` ablated."""
    model, tokenizer = setup["model"], setup["tokenizer"]
    rows = encode_prompts(tokenizer, prompts)
    with ablation(model, direction) if direction is not None else nullcontext():
        logits = last_logits(model, rows, tokenizer.pad_token_id, batch_size=8)
    return refusal_score(logits, [setup["i_token"]])


def _cfg(tmp_path: Any) -> RefusalConfig:
    # depth=1.0: with 2 layers the 80% depth filter would remove layer 1, the only non-zero one
    return RefusalConfig(model="tiny-random", harmful_limit=N_PROMPTS, harmless_limit=N_PROMPTS, probe_tokens=1, depth=1.0,
                         measure=False, batch_size=8, output=str(tmp_path / "unused"))


def test_plant_classifies_the_harness_prompts(setup) -> None:
    """The oracle flags exactly the harmful selection prompts (else the plant is not what it says)."""
    model, tokenizer = setup["model"], setup["tokenizer"]
    rows = encode_prompts(tokenizer, setup["harmful"] + setup["harmless"])
    seen: list[bool] = []

    def spy(module: Any, args: tuple[Any, ...], output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        seen.append(bool((hidden[0] @ setup["v"]).mean() > ALPHA / 2))

    with planted(setup):
        handle = model.model.layers[0].register_forward_hook(spy)  # after the plant's hook: sees its output
        try:
            for ids in rows:
                with torch.no_grad():
                    model(input_ids=torch.tensor([ids]))
        finally:
            handle.remove()
    assert seen == [True] * N_PROMPTS + [False] * N_PROMPTS


def test_run_refusal_recovers_the_planted_direction(setup, tmp_path, monkeypatch) -> None:
    """Plant: selection recovers v (cosine > 0.9), ablating it brings the refusal score back to the
    unplanted level, a random direction does not; the control model has no refusal to explain."""
    monkeypatch.setattr(refusal, "is_refusal", lambda text: text.startswith("I"))
    model, tokenizer, v = setup["model"], setup["tokenizer"], setup["v"]

    control_h = float(_scores(setup, setup["harmful"]).mean())  # plant off: the control level
    with planted(setup):
        result = run_refusal(_cfg(tmp_path), RunDir(tmp_path / "rd"), model=model, tokenizer=tokenizer, progress=False)
        sel = result.selected
        # The direction the harness selected and wrote (the same unit vector at every layer).
        unit = SteeringVector.load(tmp_path / "rd" / refusal.DIRECTION_FILE).directions[0]
        cosine = float(unit @ v / unit.norm())
        planted_h = float(_scores(setup, setup["harmful"]).mean())
        ablated_h = float(_scores(setup, setup["harmful"], unit).mean())
        random_h = float(_scores(setup, setup["harmful"], _unit(99, v.numel())).mean())
        harmless = float(_scores(setup, setup["harmless"]).mean())
    print(f"refusal KA: cosine(selected, v)={cosine:.4f} at layer {sel['layer']} position {sel['position']}; "
          f"refused {result.refusal_tokens['refused_harmful']}/{N_PROMPTS}; refusal score harmful: control {control_h:.2f}, "
          f"planted {planted_h:.2f}, selected ablated {ablated_h:.2f}, random ablated {random_h:.2f}; harmless {harmless:.2f}; "
          f"filters passed {result.filters_passed}")
    assert result.refusal_tokens["tokens"] == ["I"] and result.refusal_tokens["refused_harmful"] == N_PROMPTS
    assert sel["layer"] == 1 and result.filters_passed
    assert cosine > 0.9
    gap = planted_h - control_h
    assert gap > 5  # the plant makes refusals
    assert abs(ablated_h - control_h) < 0.1 * gap  # ablation removes them: back to the control level
    assert random_h - control_h > 0.8 * gap  # a random direction leaves them


def test_control_has_no_direction_to_find(setup, tmp_path, monkeypatch) -> None:
    """Control (plant off): the harness refuses to run (nothing is refused), the mean-difference
    candidates are small and unaligned with v, and ablating the largest changes nothing."""
    monkeypatch.setattr(refusal, "is_refusal", lambda text: text.startswith("I"))
    model, tokenizer, v = setup["model"], setup["tokenizer"], setup["v"]
    try:  # without the plant the harness has (almost) no refusal to explain
        result = run_refusal(_cfg(tmp_path), RunDir(tmp_path / "rd"), model=model, tokenizer=tokenizer, progress=False)
        refused = result.refusal_tokens["refused_harmful"]
        found = SteeringVector.load(tmp_path / "rd" / refusal.DIRECTION_FILE).directions[0]
        cos_found = abs(float(found @ v / found.norm()))
    except TunelabError as err:
        assert str(err) == NO_REFUSALS
        refused, cos_found = 0, 0.0
    print(f"refusal control: harness run refused {refused}/{N_PROMPTS}; |cos(selected, v)|={cos_found:.3f}")
    assert cos_found < 0.5  # whatever it selects, it is not the (absent) planted direction

    post = post_instruction_ids(tokenizer)
    k, pad = len(post), tokenizer.pad_token_id
    harmful, harmless = encode_prompts(tokenizer, setup["harmful"], post), encode_prompts(tokenizer, setup["harmless"], post)
    control = candidate_directions(model, harmful, harmless, k, pad, batch_size=8)[:, 1]
    with planted(setup):
        plant = candidate_directions(model, harmful, harmless, k, pad, batch_size=8)[:, 1]
    cos_control = (control @ v / control.norm(dim=-1)).abs()
    cos_plant = plant @ v / plant.norm(dim=-1)
    print(f"refusal control: candidate norms {control.norm(dim=-1).tolist()} (plant {plant.norm(dim=-1).tolist()}); "
          f"|cos| to v {cos_control.tolist()} (plant {cos_plant.tolist()})")
    assert float(control.norm(dim=-1).max()) < 0.2 * float(plant.norm(dim=-1).min())
    assert float(cos_control.max()) < 0.5 and float(cos_plant.min()) > 0.9
    top = control[int(control.norm(dim=-1).argmax())]
    base = _scores(setup, setup["harmful"])
    moved = _scores(setup, setup["harmful"], top)
    assert float((moved - base).abs().max()) < 1.0
