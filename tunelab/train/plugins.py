"""Plug-ins: how other rooms (safety, privacy, ...) add to a training run without the loop knowing them.

A plug-in is an object with a few hooks; :func:`tunelab.train.fit` calls them in the order
plug-ins were given, at fixed points of a run. Every hook has a do-nothing default, so a plug-in
overrides only what it needs:

=================  =====================================================================  ============
hook               when, and what it may do                                               ranks
=================  =====================================================================  ============
``on_data``        rows read and validated: return the chats to train on (add, rewrite)  all
``on_model``       model + tokenizer loaded, nothing tokenized: add tokens, adjust        all
                   ``run.settings`` (the adapter settings), add to ``run.chats`` data
                   that needs the tokenizer or model
``on_prepared``    adapter attached, examples tokenized, output dir not yet touched:      all
                   fill per-example fields, add to ``run.prepared.record``
``on_start``       output dir ready, before the first step (also on resume)              main
``loss``           every micro-batch: return the loss, possibly with extra terms          all
``on_step``        after every optimizer step, with that step's :class:`StepInfo`        all
``on_finish``      artefacts written, before ``tunelab.json``: add to the record,        main
                   run evaluations
=================  =====================================================================  ============

Two attributes of :class:`Run` serve plug-ins during the loop: ``run.log`` is the run's
:class:`~tunelab.train.run_dir.MetricsLog` (``run.log.write_row({"step": s, ...})`` adds a row to
``metrics.jsonl``; resuming trims rows by their ``"step"``), and a plug-in that sets
``run.stop_reason`` (a short text) in ``on_step`` ends training after that step: the run is then
saved and finished as if it had reached its last step (set it alike on every rank).
``run.total_steps`` is the number of optimizer steps the run plans.

``claims`` names the plug-in options (``option(plugin=True)``, by their flat names such as
``refusal_tokens``) a plug-in implements; ``fit`` refuses a config that sets a plug-in option no
given plug-in claims, so an option can never be silently ignored. ``tunelab.finetune`` declares
each plug-in's config section together with its plug-in (``SECTIONS``), so there every option is
claimed by construction. Example — an L2 pull towards zero on the trainable weights, and a
record entry::

    from tunelab.train import Plugin, fit

    class L2(Plugin):
        def __init__(self, weight: float) -> None:
            self.weight = weight

        def loss(self, run, batch, loss):
            params = [p for p in run.prepared.model.parameters() if p.requires_grad]
            return loss + self.weight * sum((p.float() ** 2).sum() for p in params)

        def on_finish(self, run, record):
            record["l2_weight"] = self.weight

    fit(cfg, plugins=[L2(1e-4)])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator
    from rich.console import Console

    from tunelab.adapters import AdapterSettings, PreparedModel
    from tunelab.data import Example
    from tunelab.train.config import TrainConfig

Chat = list[dict[str, str]]


@dataclass
class Run:
    """What plug-ins and update rules see of a run; filled in as the run proceeds."""

    cfg: TrainConfig
    out: Path
    console: Console
    accelerator: Accelerator
    resumed: bool = False
    chats: list[Chat] = field(default_factory=list)  # what will be tokenized and trained on
    model: Any = None  # the loaded base model (before the adapter is attached)
    tokenizer: Any = None
    settings: AdapterSettings | None = None
    examples: list[Example] = field(default_factory=list)
    prepared: PreparedModel | None = None
    total_steps: int = 0  # optimizer steps planned (set before on_loop_start)
    log: Any = None  # the metrics.jsonl log (MetricsLog), from on_loop_start on: log.write_row({"step": ..., ...})
    stop_reason: str | None = None  # set by a plug-in in on_step: training ends after that step


@dataclass
class StepInfo:
    """One optimizer step, as logged to ``metrics.jsonl``."""

    step: int
    loss: float | None  # None where the update rule keeps the (private) training loss out of logs
    lr: float
    grad_norm: float | None
    tokens: int  # tokens seen so far, all ranks
    elapsed_s: float


class Plugin:
    """Base class of training plug-ins; see the module docstring for the hooks."""

    #: TrainConfig options this plug-in implements (fit refuses unclaimed ones)
    claims: ClassVar[tuple[str, ...]] = ()

    def on_data(self, run: Run, rows: list[tuple[str, Any]], chats: list[Chat]) -> list[Chat]:
        """Return the chats to train on; ``rows`` are the raw records (with "file:line") behind ``chats``."""
        return chats

    def on_model(self, run: Run) -> None:
        """``run.model``/``run.tokenizer`` are loaded; nothing is tokenized or adapted yet."""

    def on_prepared(self, run: Run) -> None:
        """``run.prepared`` and ``run.examples`` exist; the output directory is untouched."""

    def on_start(self, run: Run) -> None:
        """The output directory holds the config; training starts (or resumes) next. Main process only."""

    def on_loop_start(self, run: Run, step: int) -> None:
        """The loop starts next, at optimizer step ``step`` (0, or where a resumed run continues);
        the model is on its device and ``run.log`` is open. All processes."""

    def loss(self, run: Run, batch: dict[str, torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        """The micro-batch loss to backpropagate (``loss`` plus any terms of this plug-in)."""
        return loss

    def on_step(self, run: Run, info: StepInfo) -> None:
        """After each optimizer step."""

    def on_finish(self, run: Run, record: dict[str, Any]) -> None:
        """The trained artefacts are written; add to ``record`` (``tunelab.json``). Main process only."""


def unclaimed_options(cfg: TrainConfig, plugins: Sequence[Plugin]) -> list[str]:
    """Plug-in options ``cfg`` sets away from their defaults that none of ``plugins`` claims."""
    claimed = {name for plugin in plugins for name in plugin.claims}
    return [name for name in cfg.plugin_options_set() if name not in claimed]
