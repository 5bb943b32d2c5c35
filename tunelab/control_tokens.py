"""The refusal-token vocabulary: which control tokens a model trained with ``--refusal-tokens`` carries,
and how to read them back from its tokenizer and its generations.

It lives in the core layer (not in ``tunelab.safety``) because evaluation reads it too: the safety
suite counts a refuse token as a refusal whatever the judge says. Training with the tokens, and the
first-step control at inference, stay in :mod:`tunelab.safety.refusal_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import TunelabError

RESPOND = "[respond]"
REFUSE = "[refuse]"
MODES = ("single", "categorical")
HARMFUL_SOURCE = "harmful-refusal"  # the source tag of the safety recipe's refusal records (they get a refuse token)

# Refusal category → the HarmBench topics (tunelab.evaluate.prompts.harm_topic) it covers. Five coarse
# categories a user would plausibly switch on and off independently; chemical/biological and violence
# share one ("weapons": both are about physical harm), "other-harm" falls to "crime".
REFUSAL_CATEGORIES: dict[str, tuple[str, ...]] = {
    "cyber": ("cybercrime",),
    "weapons": ("chemical-biological", "violence-weapons"),
    "harassment": ("harassment-hate",),
    "misinformation": ("misinformation",),
    "crime": ("illegal-activity", "other-harm"),
}
DEFAULT_CATEGORY = "crime"  # a harmful record whose category maps to nothing above


def category_token(category: str) -> str:
    """The control token of a refusal category."""
    return f"[refuse:{category}]"


def refusal_category(category: str | None) -> str:
    """A refusal category for a record/prompt category: itself, or the one covering its HarmBench topic."""
    if category in REFUSAL_CATEGORIES:
        return category
    for name, topics in REFUSAL_CATEGORIES.items():
        if category in topics:
            return name
    return DEFAULT_CATEGORY


def parse_categories(text: str | None) -> list[str] | None:
    """``"cyber,weapons"`` → a checked list (None for none given)."""
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise TunelabError("--refusal-categories is empty; give a comma-separated list such as cyber,weapons")
    unknown = [c for c in names if c not in REFUSAL_CATEGORIES]
    if unknown:
        raise TunelabError(f"unknown refusal categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                           f"choose from: {', '.join(REFUSAL_CATEGORIES)}")
    return names


@dataclass(frozen=True)
class RefusalTokens:
    """Which control tokens a model uses: ``refuse`` maps a category (``"refuse"`` in single mode) to its token."""

    mode: str
    refuse: dict[str, str] = field(default_factory=dict)
    respond: str = RESPOND

    @classmethod
    def from_mode(cls, mode: str) -> "RefusalTokens":
        """The tokens of ``mode`` (single or categorical)."""
        if mode == "single":
            return cls("single", {"refuse": REFUSE})
        if mode == "categorical":
            return cls("categorical", {c: category_token(c) for c in REFUSAL_CATEGORIES})
        raise TunelabError(f"unknown refusal-token mode '{mode}'; choose one of: {', '.join(MODES)}")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "RefusalTokens | None":
        """The tokens a (trained) tokenizer carries, or None: the mode is read off its vocabulary."""
        vocab = tokenizer.get_vocab()
        if RESPOND not in vocab:
            return None
        if REFUSE in vocab:
            return cls.from_mode("single")
        spec = cls.from_mode("categorical")
        return spec if all(t in vocab for t in spec.refuse.values()) else None

    @property
    def tokens(self) -> list[str]:
        """Every control token, refuse tokens first."""
        return [*self.refuse.values(), self.respond]

    @property
    def categories(self) -> list[str]:
        """The refusal categories (``["refuse"]`` in single mode)."""
        return list(self.refuse)

    def ids(self, tokenizer: Any) -> dict[str, int]:
        """Token string → id in ``tokenizer`` (which must hold them)."""
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.tokens if t not in vocab]
        if missing:
            raise TunelabError(f"the tokenizer has no refusal tokens {missing}; was the model trained with --refusal-tokens {self.mode}?")
        return {t: int(vocab[t]) for t in self.tokens}

    def token_for(self, record: dict[str, Any], where: str) -> str:
        """The control token a training record's response starts with."""
        override = record.get("refusal_token")
        if override not in (None, ""):
            return self._resolve(str(override), where)
        if record.get("source") != HARMFUL_SOURCE:
            return self.respond
        if self.mode == "single":
            return self.refuse["refuse"]
        return self.refuse[refusal_category(record.get("category"))]

    def _resolve(self, name: str, where: str) -> str:
        """A ``refusal_token`` field: a token string, ``respond``, ``refuse`` (single) or a category name."""
        if name in self.tokens:
            return name
        if name == "respond":
            return self.respond
        key = name if self.mode == "categorical" else ("refuse" if name == "refuse" else None)
        if key in self.refuse:
            return self.refuse[key]
        raise TunelabError(f"{where}: field 'refusal_token' is '{name}', expected one of {', '.join(self.tokens)}")

    def record(self, tokenizer: Any) -> dict[str, Any]:
        """What ``tunelab.json`` keeps: mode, tokens and their ids, the category mapping."""
        out: dict[str, Any] = {"mode": self.mode, "tokens": self.ids(tokenizer), "respond": self.respond, "refuse": dict(self.refuse)}
        if self.mode == "categorical":
            out["categories"] = {c: list(t) for c, t in REFUSAL_CATEGORIES.items()}
        return out


def control_tokens(tokenizer: Any, generations: Sequence[Sequence[int]]) -> list[str | None]:
    """The control token each generation opens with (None where it opens with something else)."""
    spec = RefusalTokens.from_tokenizer(tokenizer)
    if spec is None:
        return [None] * len(generations)
    by_id = {i: t for t, i in spec.ids(tokenizer).items()}
    return [by_id.get(int(new[0])) if len(new) else None for new in generations]


def is_refuse_token(token: str | None) -> bool:
    """Whether a control token is a refuse token (the judge counts it as a refusal)."""
    return token is not None and token != RESPOND and token.startswith("[refuse")


__all__ = ["DEFAULT_CATEGORY", "HARMFUL_SOURCE", "MODES", "REFUSAL_CATEGORIES", "REFUSE", "RESPOND", "RefusalTokens",
           "category_token", "control_tokens", "is_refuse_token", "parse_categories", "refusal_category"]
