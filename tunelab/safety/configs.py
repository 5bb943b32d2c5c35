"""The configs of ``tunelab audit safety-depth`` and ``tunelab audit refusal-calibration``.

Light on purpose (no torch): the CLI builds the commands' flags from these classes when it is
imported (:func:`tunelab.cli.build.config_command`); each option's help, bounds and parser live
on its field. The runs are jobs (:class:`tunelab.results.Job`):
``run_safety_depth(cfg, run_dir=None)`` (:mod:`tunelab.safety.depth`) and
``run_refusal_calibration(cfg, run_dir=None)`` (:mod:`tunelab.safety.refusal_tokens`); a config built
in Python (no CLI) works the same, e.g.::

    cfg = SafetyDepthConfig(model="smollm2-135m", adapter="runs/safe", limit=40, output=Path("runs/depth"))
    result = run_safety_depth(cfg)          # -> SafetyDepthResult, also written to runs/depth/metrics.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.configs import sectioned
from tunelab.errors import TunelabError
from tunelab.evaluate.options import RefusalOptions
from tunelab.options import check_fields, option
from tunelab.results import RunDir


def parse_ks(text: str) -> list[int]:
    """``"0,5,10"`` → ``[0, 5, 10]``; one-line error for anything else."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TunelabError(f"--ks must be comma-separated integers >= 0, got '{text}'") from None
    if not ks or any(k < 0 for k in ks):
        raise TunelabError(f"--ks must be comma-separated integers >= 0, got '{text}'")
    return sorted(set(ks))


DEFAULT_THRESHOLDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def parse_thresholds(text: str | None) -> list[float]:
    """``"0.1,0.5"`` → sorted thresholds in [0, 1] (the default sweep for None)."""
    if text is None:
        return list(DEFAULT_THRESHOLDS)
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TunelabError(f"--thresholds must be comma-separated numbers, got '{text}'") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise TunelabError(f"--thresholds must be numbers in [0, 1], got '{text}'")
    return sorted(set(values))


@dataclass
class SafetyDepthConfig:
    """``tunelab audit safety-depth``: KL(aligned ‖ base) per response position and prefill ASR vs k.

    A caller sets ``model`` (the aligned model) and usually ``adapter`` (the aligned adapter); the
    base is ``base`` (default: ``model``) with ``base_adapter`` (default: none), and the two must
    differ. ``limit`` takes the first N HarmBench test prompts (default all), ``positions`` the KL
    profile's length, ``ks`` the prefilled token counts, ``opening`` the compliant text (``None``:
    :data:`~tunelab.safety.depth.AFFIRMATIVE_OPENING`; ``"heldout"``: the second one; else the
    text itself), ``output`` the directory (:meth:`run_dir`).
    """

    model: str = option("smollm2-135m", help="the aligned model (alias, dir or hub id)")
    adapter: str | None = option(None, help="the aligned model's adapter / run dir")
    base: str | None = option(None, help="the base model to compare with", show_default="--model")
    base_adapter: str | None = option(None, help="an adapter on the base")
    positions: int = option(20, min=1, help="response positions of the KL profile")
    limit: int | None = option(None, min=1, help="first N HarmBench test prompts", show_default="all")
    ks: list[int] = option(default_factory=lambda: [0, 5, 10, 20, 40], parse=parse_ks,
                           help="prefilled token counts of the prefilling attack")
    max_new_tokens: int = option(64, help="continuation length after the prefill")
    batch_size: int = option(8)
    opening: str | None = option(None, help="compliant opening to force: text, 'heldout' for tunelab's second one",
                                 show_default="the one augment-recovery trains on")
    output: Path = option(Path("runs/safety-depth"), help="directory for metrics.json")

    def validate(self) -> None:
        """Raise ``TunelabError`` before any model loads (the one-field rules first)."""
        check_fields(self)
        if not self.ks or any(k < 0 for k in self.ks):
            raise TunelabError(f"--ks must be integers >= 0, got {list(self.ks)}")
        for adapter in (self.adapter, self.base_adapter):
            if adapter is not None and not Path(adapter).is_dir():
                raise TunelabError(f"adapter directory not found: {adapter}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise TunelabError("--max-new-tokens and --batch-size must be >= 1")
        if self.opening is not None and not self.opening.strip():
            raise TunelabError("--opening must not be empty")
        if (self.base or self.model) == self.model and self.adapter == self.base_adapter:
            raise TunelabError("the aligned model and the base are the same (give --adapter, --base-adapter or another --base)")

    def run_dir(self) -> RunDir:
        """``output`` as the job's :class:`RunDir` (no overwrite rule: a rerun writes over the files)."""
        return RunDir(Path(self.output), what="a safety-depth audit")


@sectioned
@dataclass
class RefusalCalibrationConfig:
    """``tunelab audit refusal-calibration``: refusal rate and F1 on harmful vs benign prompts as τ varies.

    A caller sets ``model`` and ``adapter`` (a run trained with ``--refusal-tokens``); ``thresholds``
    (``None``: the default sweep 0, 0.01, ..., 1), ``limit`` (first N prompts of each test set),
    ``refusal.refusal_categories`` / ``refusal.refusal_temperature`` and ``output`` (:meth:`run_dir`).
    ``refusal.refusal_threshold`` and ``refusal.refusal_bias`` must stay ``None``: the sweep varies τ.
    """

    model: str = option("smollm2-135m", help="the base model (alias, dir or hub id)")
    adapter: str | None = option(None, help="a run trained with --refusal-tokens")
    thresholds: list[float] | None = option(None, parse=parse_thresholds, help="comma-separated τ values in [0, 1]",
                                            show_default="0, 0.01, ..., 0.99, 1")
    limit: int | None = option(None, help="first N prompts of each test set", show_default="all")
    refusal: RefusalOptions = field(default_factory=RefusalOptions)  # categories and T; the sweep is over τ
    batch_size: int = option(16)
    output: Path = option(Path("runs/refusal-calibration"), help="directory for metrics.json")

    def validate(self) -> None:
        """Raise ``TunelabError`` (one line) before any model loads.

        The job checks the rest first and last: categories and temperature (``check_control``,
        beside the refusal rule it checks) before these rules, the output and adapter after them.
        """
        if self.refusal.refusal_threshold is not None or self.refusal.refusal_bias is not None:
            raise TunelabError("refusal calibration sweeps τ: it takes no refusal threshold or bias")
        if self.limit is not None and self.limit < 1:
            raise TunelabError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise TunelabError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.thresholds is not None and (not self.thresholds or any(not 0.0 <= t <= 1.0 for t in self.thresholds)):
            raise TunelabError(f"--thresholds must be numbers in [0, 1], got '{','.join(map(str, self.thresholds))}'")

    def run_dir(self) -> RunDir:
        """``output`` as the job's :class:`RunDir` (no overwrite rule: a rerun writes over the files)."""
        return RunDir(Path(self.output), what="a refusal calibration")


__all__ = ["DEFAULT_THRESHOLDS", "RefusalCalibrationConfig", "SafetyDepthConfig", "parse_ks", "parse_thresholds"]
