"""Flag groups shared by every command that generates: generation, refusal-token control, steering,
and who judges the answers (the safety suite's judge).

Each group is a plain dataclass whose fields carry their option's help, bounds and parser
(:func:`tunelab.options.option`); a command's config holds it as a section (``generation:
GenerationOptions``) and :func:`tunelab.cli.build.config_command` makes the same flat flags
(``--temperature``, ``--refusal-threshold``, ``--steer-layers``) for every command that takes it.
With :func:`tunelab.configs.sectioned` the config still takes, reads and saves them flat
(``refusal_threshold: 0.5`` in YAML, ``cfg.refusal_threshold``).

The groups sit here, below the rooms that implement them (refusal control in
:mod:`tunelab.safety.refusal_tokens`, steering in :mod:`tunelab.inspect.steering`), so that
evaluation's config can hold them; those rooms check the rules that involve several options
(``check_control``, ``steer_spec``) and build the intervention objects.

A command may default a group differently (``eval`` samples at temperature 0.9):
``field(default_factory=lambda: GenerationOptions(temperature=0.9))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.control_tokens import parse_categories
from tunelab.errors import TunelabError
from tunelab.evaluate.judges import JUDGES
from tunelab.layout import JUDGE_CARD
from tunelab.options import int_ranges, option


@dataclass
class GenerationOptions:
    """How a command decodes: length, greedy or sampled, batch size."""

    max_new_tokens: int | None = option(128, min=1, help="tokens generated per prompt")
    sample: bool = option(False, flag="--sample", help="sample instead of greedy")
    temperature: float = option(0.7, help="sampling temperature")
    top_p: float = option(0.9, help="nucleus sampling")
    batch_size: int = option(32, help="prompts per forward")
    bf16: bool = option(False, flag="--bf16/--no-bf16", help="bf16 autocast for generation")


@dataclass
class RefusalOptions:
    """Refusal-token control of a model trained with ``--refusal-tokens`` (at the first decoding step).

    Force the opening token by threshold τ on p(refuse), or add a bias to the refuse logits;
    categorical models: only these categories may refuse (None: all).
    """

    refusal_threshold: float | None = option(
        None, help="refusal tokens: open with a refuse token iff its p ≥ τ, else [respond]")
    refusal_bias: float | None = option(None, help="refusal tokens: add b to the refuse logit(s) at the first step")
    refusal_categories: list[str] | None = option(
        None, parse=parse_categories, help="categorical refusal tokens: categories that may refuse, e.g. cyber,weapons")
    refusal_temperature: float = option(1.0, help="refusal tokens: T of p = softmax(logits / T)", show_default="1.0")

    def asked(self) -> bool:
        """Whether any option that turns refusal control on is set (the temperature alone does not)."""
        return self.refusal_threshold is not None or self.refusal_bias is not None or self.refusal_categories is not None


@dataclass
class SteeringOptions:
    """A steering vector (``tunelab inspect steer train``) applied while the model generates or is scored.

    ``None`` means the steering room's default (coefficient 1.0, every layer the vector has,
    all positions, mode add); the room (``steer_spec``) fills them in and refuses options without
    ``--steer``.
    """

    steer: str | None = option(None, help="a steering vector (`tunelab inspect steer train`) to apply")
    coeff: float | None = option(None, help="steering coefficient", show_default="1.0")
    steer_layers: list[int] | None = option(None, parse=int_ranges("--steer-layers"), help="layers to steer, e.g. 10-14",
                                            show_default="all the vector has")
    steer_positions: str | None = option(None, help="all, prompt or last (the last prompt token)", show_default="all")
    steer_mode: str | None = option(None, help="add (x + c·v) or ablate (x − c·(x·v̂)v̂)", show_default="add")

    def asked(self) -> bool:
        """Whether any steering option is set."""
        return any(v is not None for v in (self.steer, self.coeff, self.steer_layers, self.steer_positions,
                                            self.steer_mode))


@dataclass
class JudgeOptions:
    """Who decides refused or complied when a command runs the safety suite (``eval --suite safety``,
    ``inspect refusal-direction``, ``inspect prune``): a registered judge, a judge directory or a
    local HF judge model; the degenerate-text guard runs whatever the judge."""

    judge: str = option("keyword", help=f"safety: a judge ({JUDGES.help()}) or a local judge model dir")
    judge_threshold: float = option(0.5, help="judge score counted as complied")

    def check(self) -> None:
        """Raise TunelabError (one line) for a judge that is neither registered nor a judge/model directory."""
        if self.judge in JUDGES or any((Path(self.judge) / f).is_file() for f in ("config.json", JUDGE_CARD)):
            return
        if "/" in self.judge or Path(self.judge).exists():  # meant as a model directory
            raise TunelabError(f"judge model not found: {self.judge} (use a registered judge, {JUDGES.help()}, "
                               "a judge directory from 'tunelab judge train' or a local HF model directory)")
        raise TunelabError(f"{JUDGES.unknown_message(self.judge)}; or a judge directory or local judge model")

    def make(self) -> Any:
        """The :class:`~tunelab.evaluate.judges.Judge` these options name (an embedding judge loads its encoder here)."""
        from tunelab.evaluate.judges import get_judge

        return get_judge(self.judge, self.judge_threshold)


__all__ = ["GenerationOptions", "JudgeOptions", "RefusalOptions", "SteeringOptions"]
