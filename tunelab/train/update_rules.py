"""Update rules: how the micro-batches of one step become one parameter update.

The loop owns data, accumulation bookkeeping, logging and checkpoints; a rule owns the
optimizer. Per micro-batch the loop calls ``rule.micro_step(loss_fn, batch)`` inside
``accelerator.accumulate``; once a step's micro-batches are in (``accelerator.sync_gradients``)
it calls ``rule.step()``. ``loss_fn(batch)`` is the objective with the plug-ins' loss terms, so
a rule may evaluate it as often as it likes (zeroth-order rules evaluate it twice, without
backward); ``loss_fn(batch, per_example=True)`` gives each example's own mean loss ([B], no
plug-in terms: a rule with ``per_example = True`` is refused next to plug-ins that add some).
A rule's ``state_dict``/``load_state_dict`` are what a checkpoint keeps of it.

Optional hooks, with do-nothing defaults, let a rule go further without the loop knowing why
(the differentially private rules of :mod:`tunelab.privacy` use all of them):

* ``default_lr(cfg)``: its learning rate when the config gives none (``None``: the method's);
* ``prepare(run)``: data, model and adapter are loaded, the output directory is untouched —
  check what depends on them and raise :class:`~tunelab.errors.TunelabError` (DP calibrates here);
* ``batches(run)``: its own sampling, ``(batch sampler, steps)``, one batch per step (Poisson);
* ``logs_loss()``: ``False`` keeps the training loss out of logs, progress bar and record;
* ``progress_note()``: a short text for the progress bar (e.g. ε spent so far);
* ``record()``: entries for ``tunelab.json`` (e.g. the privacy ledger);
* ``finish()``: the loop is over, also on error — remove hooks (DP-SGD's per-sample hooks).

:class:`AdamW` is backprop + AdamW with gradient accumulation, sparse gradient masks applied to
``.grad`` before clipping (LoRI-S, LoTA: entries outside the mask get no gradient, so AdamW's
moments and steps stay exactly 0 there), clipping and the LR schedule. Differentially private
and zeroth-order rules plug in the same way. Example — sign-SGD, keeping AdamW's set-up, masks
and checkpoints but replacing the update::

    import torch
    from tunelab.train import AdamW, fit

    class SignSGD(AdamW):
        def step(self):
            self.mask_gradients()
            with torch.no_grad():
                for p in self.params.values():
                    if p.grad is not None:
                        p.add_(p.grad.sign(), alpha=-1e-3)
                        p.grad = None
            return {"lr": 1e-3, "grad_norm": None}

    fit(cfg, rule=SignSGD())
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from transformers import get_scheduler

from tunelab.errors import TunelabError
from tunelab.train import fsdp
from tunelab.train.checkpoint import optimizer_from_flat, optimizer_to_flat
from tunelab.train.plugins import Run

if TYPE_CHECKING:
    from tunelab.train.config import TrainConfig

LossFn = Callable[..., torch.Tensor]  # loss_fn(batch, per_example=False)
_SCHEDULER_NAMES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


class UpdateRule(abc.ABC):
    """Turns micro-batches into parameter updates; see the module docstring."""

    name: str = ""
    #: micro_step calls ``loss_fn(batch, per_example=True)`` (per-example clipping)
    per_example: bool = False
    # Capabilities, read by config validation (``tunelab.train.config.rule_class``) instead of
    # testing the rule's name:
    #: differentially private (the ``dp`` section of the config applies)
    private: bool = False
    #: zeroth-order (SPSA): takes ``--zo-eps``
    zeroth_order: bool = False
    #: works with ``--fsdp`` and objectives other than plain SFT
    supports_fsdp_and_objectives: bool = False

    def default_lr(self, cfg: TrainConfig) -> float | None:
        """The learning rate when the config sets none; ``None``: the adapter method's default."""
        return None

    def prepare(self, run: Run) -> None:
        """Data, model and adapter are loaded; check what depends on them before the output dir is touched."""

    def batches(self, run: Run) -> tuple[Sequence[list[int]], int] | None:
        """``(batch sampler, optimizer steps)`` to replace the loop's length-grouped batches, or ``None``."""
        return None

    def logs_loss(self) -> bool:
        """Whether the training loss may be logged, shown and recorded."""
        return True

    def progress_note(self) -> str:
        """Extra text for the progress bar."""
        return ""

    def record(self) -> dict[str, Any]:
        """Entries for the run's ``tunelab.json``."""
        return {}

    def finish(self) -> None:
        """The loop is over (finished, interrupted or failed): release hooks and buffers."""

    @abc.abstractmethod
    def setup(self, run: Run, params: dict[str, torch.nn.Parameter], total_steps: int) -> None:
        """Build the optimizer for the trainable ``params`` (named as in ``run.prepared.model``,
        after any sharding) for a run of ``total_steps`` optimizer steps."""

    @abc.abstractmethod
    def micro_step(self, loss_fn: LossFn, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Process one micro-batch (e.g. forward + backward); return its detached loss."""

    @abc.abstractmethod
    def step(self) -> dict[str, float | None]:
        """Apply the accumulated update; return ``{"lr": ..., "grad_norm": ...}``."""

    @abc.abstractmethod
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able metadata) to checkpoint."""

    @abc.abstractmethod
    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def require_one_process(run: Run) -> None:
    """Refuse a multi-process launch for rules that keep their sampling or perturbations in one process."""
    if run.accelerator.num_processes > 1:
        raise TunelabError(f"--optimizer {run.cfg.optimizer} runs in one process; launch it without torchrun")


def trainable_masks(run: Run, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The method's gradient masks (LoRI-S, LoTA) by parameter name; every one must belong to a trainable weight."""
    masks = run.prepared.grad_masks() if run.prepared else {}
    stray = sorted(set(masks) - set(params))
    if stray:
        raise RuntimeError(f"gradient masks for parameters that do not train: {stray[:3]}")
    return masks


def lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int, processes: int = 1) -> Any:
    """The config's LR schedule over ``total_steps``; accelerate steps a prepared scheduler once per
    process, so a multi-process run scales it by ``processes``."""
    return get_scheduler(_SCHEDULER_NAMES[cfg.scheduler], optimizer, num_warmup_steps=cfg.warmup_steps * processes,
                         num_training_steps=total_steps * processes)


class AdamW(UpdateRule):
    """Backprop + AdamW: accumulation, gradient masks, clipping, the config's LR schedule."""

    name = "adamw"
    supports_fsdp_and_objectives = True

    def setup(self, run: Run, params: dict[str, torch.nn.Parameter], total_steps: int) -> None:
        cfg, accelerator = run.cfg, run.accelerator
        self.run = run
        self.params = params
        self.masks = trainable_masks(run, params)
        optimizer = self.make_optimizer(list(params.values()), cfg)
        scheduler = lr_scheduler(cfg, optimizer, total_steps, accelerator.num_processes)
        self.optimizer, self.scheduler = accelerator.prepare(optimizer, scheduler)

    def make_optimizer(self, params: list[torch.nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
        """The torch optimizer :meth:`setup` schedules and prepares; a subclass swaps it here (e.g. plain SGD)."""
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def micro_step(self, loss_fn: LossFn, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = loss_fn(batch)
        self.run.accelerator.backward(loss)
        return loss.detach()

    def step(self) -> dict[str, float | None]:
        self.mask_gradients()
        grad_norm = None
        if self.run.cfg.grad_clip > 0:
            grad_norm = self.clip_gradients(self.run.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm}

    def mask_gradients(self) -> None:
        """Zero ``.grad`` outside the method's masks (LoRI-S, LoTA), before clipping and the step.

        Not gradient hooks: those do not survive FSDP's parameter swap. Masking the accumulated
        gradient equals summing masked micro-batch gradients exactly.
        """
        fsdp.apply_grad_masks(self.params, self.masks)

    def clip_gradients(self, max_norm: float) -> float:
        """Clip the total gradient norm (over all ranks) to ``max_norm``; return it before clipping."""
        params = list(self.params.values())
        if self.run.cfg.fsdp:
            return fsdp.clip_grad_norm(params, max_norm)
        return float(self.run.accelerator.clip_grad_norm_(params, max_norm))

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        # Under FSDP the full state (keyed by parameter name) is gathered on rank 0; all ranks call this.
        optimizer = self.optimizer.optimizer
        state = fsdp.optimizer_full_state(self.run.prepared.model, optimizer) if self.run.cfg.fsdp else optimizer.state_dict()
        tensors, meta = optimizer_to_flat(state) if state else ({}, {})
        return tensors, {"optimizer": meta, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        state = optimizer_from_flat(tensors, meta["optimizer"])
        if self.run.cfg.fsdp:
            fsdp.load_full_state(self.run.prepared.model, self.optimizer.optimizer, None, state)
        else:
            self.optimizer.optimizer.load_state_dict(state)
        self.scheduler.load_state_dict(meta["scheduler"])

