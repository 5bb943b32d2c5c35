"""Task definition, scoring rules and the deterministic, split-safe example generator."""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.registry import Registry

SPLITS = ("train", "test")
# Fraction of the problem space (by prompt hash) reserved for the test split, in percent.
TEST_PERCENT = 20
MAX_CONSECUTIVE_MISSES = 100_000

# A number is an optional sign, digits with optional thousands groups, optional decimals.
# The sign only counts when it does not follow a word character or ')', so "5-3" yields 3, not -3.
_NUMBER_RE = re.compile(r"(?:(?<![\w)])-)?\d+(?:,\d{3})*(?:\.\d+)?")
_SPACE_RE = re.compile(r"\s+")


def last_number(text: str) -> float | None:
    """Return the last number in ``text`` (commas ignored), or None if there is none."""
    matches = _NUMBER_RE.findall(text)
    if not matches:
        return None
    return float(matches[-1].replace(",", ""))


def score_numeric(prediction: str, reference: str) -> float:
    """1.0 if the last number in ``prediction`` equals the reference number, else 0.0."""
    ref = last_number(reference)
    pred = last_number(prediction)
    if ref is None or pred is None:
        return 0.0
    return 1.0 if pred == ref else 0.0


def normalize_text(text: str) -> str:
    """Strip, lower-case, collapse whitespace and drop trailing periods."""
    text = _SPACE_RE.sub(" ", text.strip().lower())
    return text.rstrip(".").rstrip()


def score_exact(prediction: str, reference: str) -> float:
    """1.0 if prediction and reference are equal after ``normalize_text``, else 0.0."""
    return 1.0 if normalize_text(prediction) == normalize_text(reference) else 0.0


def score_contains(prediction: str, reference: str) -> float:
    """1.0 if the normalized reference occurs in the normalized prediction, else 0.0."""
    return 1.0 if normalize_text(reference) in normalize_text(prediction) else 0.0


# Scorers that compare generated text with a reference; tunelab.evaluate.scorers adds the
# model-based ones (multiple choice by log-likelihood, code by execution).
SCORERS: Registry[Callable[[str, str], float]] = Registry("scorer", listing="known scorers: ")
SCORERS.register("numeric", score_numeric)
SCORERS.register("exact", score_exact)
SCORERS.register("contains", score_contains)


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, fixed by a stable hash of the prompt alone.

    Depending only on the prompt (not the seed) is what makes train and test
    disjoint for every seed and every process.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT else "train"


@dataclass(frozen=True)
class Task:
    """A generated fine-tuning task: subclasses implement ``draw``."""

    name: str
    description: str
    scorer: str

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise TunelabError(
                f"task '{self.name}': unknown scorer '{self.scorer}'; "
                f"known scorers: {', '.join(sorted(SCORERS))}"
            )

    def draw(self, rng: random.Random) -> tuple[str, str]:
        """Draw one random (prompt, response) pair from the task's problem space."""
        raise NotImplementedError

    def examples(self, split: str, n: int, seed: int = 0) -> list[dict[str, str]]:
        """Return ``n`` distinct records ``{"prompt", "response"}`` from ``split``.

        Deterministic in (split, n, seed); a smaller ``n`` gives a prefix of a larger one.
        """
        if split not in SPLITS:
            raise TunelabError(f"unknown split '{split}'; expected one of: {', '.join(SPLITS)}")
        if n < 0:
            raise TunelabError(f"number of examples must be >= 0, got {n}")
        # str seeds are hashed with SHA-512 by random.Random, so this is stable across processes.
        rng = random.Random(f"{self.name}/{split}/{seed}")
        records: list[dict[str, str]] = []
        seen: set[str] = set()
        misses = 0
        while len(records) < n:
            prompt, response = self.draw(rng)
            if prompt in seen or split_of(prompt) != split:
                misses += 1
                # A long run of misses means the split's problem space is (nearly) exhausted.
                if misses >= MAX_CONSECUTIVE_MISSES:
                    raise TunelabError(
                        f"task '{self.name}' could only generate {len(records)} distinct "
                        f"{split} examples, {n} requested"
                    )
                continue
            misses = 0
            seen.add(prompt)
            records.append({"prompt": prompt, "response": response})
        return records

    def score(self, prediction: str, reference: str) -> float:
        """Score a model's prediction against the reference response (1.0 or 0.0)."""
        return SCORERS.get(self.scorer)(prediction, reference)
