"""Zeroth-order training (MeZO): SPSA gradient estimates from two forward passes, no backward.

Each step draws a direction ``z ~ N(0, I)`` over the trainable weights from the step's seed and
estimates the directional derivative from two forwards::

    g = (L(θ + φz) − L(θ − φz)) / (2φ)          θ ← θ − η · (g · z + λθ)

``z`` is never stored: it is regenerated from the seed for each of the in-place perturbations
(+φz, −2φz, +φz) and for the update, so memory is that of inference. Unlike MeZO, the seed feeds
a dedicated ``torch.Generator`` — reseeding the global RNG would also move dropout and data
order — and both forwards of a step see the same dropout masks. Trainable weights must be fp32
(bf16 autocast only touches activations): in bf16 the ± perturbation would not restore θ.
Gradient masks (LoRI-S, LoTA) multiply ``z``, so entries outside a mask never move.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from tunelab.adapters import ADAPTER_METHODS
from tunelab.errors import TunelabError
from tunelab.train.config import TrainConfig
from tunelab.train.plugins import Run
from tunelab.train.update_rules import LossFn, UpdateRule, lr_scheduler, require_one_process, trainable_masks

ZO_EPS_FULL, ZO_EPS_ADAPTER = 1e-3, 1e-2  # MeZO's φ for full fine-tuning and for LoRA
ZO_LR_FULL, ZO_LR_ADAPTER = 1e-6, 1e-4  # MeZO's learning rates (full 1e-6..1e-7; LoRA 1e-4..5e-5)


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s direction ``z`` (distinct per run seed and step)."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


class ZO(UpdateRule):
    """MeZO-style SPSA on the trainable weights; see the module docstring."""

    name = "zo"
    zeroth_order = True

    def default_lr(self, cfg: TrainConfig) -> float | None:
        return ZO_LR_FULL if ADAPTER_METHODS.get(cfg.method).full_model else ZO_LR_ADAPTER

    def prepare(self, run: Run) -> None:
        require_one_process(run)

    def setup(self, run: Run, params: dict[str, torch.nn.Parameter], total_steps: int) -> None:
        cfg = run.cfg
        low = [name for name, p in params.items() if p.dtype != torch.float32]
        if low:
            raise TunelabError(f"--optimizer {cfg.optimizer} perturbs fp32 weights; {low[0]} is {params[low[0]].dtype}")
        self.run, self.params = run, params
        self.masks = {name: m.to(torch.float32) for name, m in trainable_masks(run, params).items()}
        self.eps = cfg.zo_eps or (ZO_EPS_FULL if ADAPTER_METHODS.get(cfg.method).full_model else ZO_EPS_ADAPTER)
        self.device = next(iter(params.values())).device
        self.generator = torch.Generator(self.device)
        self.steps_done = 0
        self.projected, self.micro = 0.0, 0
        # The schedule only: a one-weight SGD carries get_scheduler's LR multiplier.
        self._lr_holder = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        self.scheduler = lr_scheduler(cfg, self._lr_holder, total_steps)

    def directions(self, seed: int) -> Iterator[tuple[torch.nn.Parameter, torch.Tensor]]:
        """``(weight, z)`` for every trainable weight, the same ``z`` for the same seed (masked)."""
        self.generator.manual_seed(seed)
        for name, param in self.params.items():
            z = torch.randn(param.shape, generator=self.generator, device=self.device, dtype=torch.float32)
            if name in self.masks:
                z.mul_(self.masks[name])
            yield param, z

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        """θ ← θ + scale · z(seed), in place."""
        for param, z in self.directions(seed):
            param.add_(z, alpha=scale)

    def two_sided(self, evaluate: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``evaluate()`` (the loss(es)) at θ + φz and at θ − φz for this step's ``z``; θ is restored afterwards.

        Both forwards run under the same RNG state (same dropout masks), forked so the run's
        global RNG does not move.
        """
        seed = step_seed(self.run.cfg.seed, self.steps_done)
        losses = []
        with torch.no_grad():
            for scale in (self.eps, -2 * self.eps):
                self.perturb(seed, scale)
                with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
                    torch.manual_seed(seed)
                    losses.append(evaluate().float())
            self.perturb(seed, self.eps)
        return losses[0], losses[1]

    def micro_step(self, loss_fn: LossFn, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        plus, minus = self.two_sided(lambda: loss_fn(batch))
        self.projected += float(plus - minus) / (2 * self.eps)
        self.micro += 1
        return (plus + minus).detach() / 2

    def apply(self, projected: float) -> float:
        """θ ← θ − η (projected · z + λθ) with this step's z; advance the schedule; return η."""
        lr = self.scheduler.get_last_lr()[0]
        decay = self.run.cfg.weight_decay
        with torch.no_grad():
            for param, z in self.directions(step_seed(self.run.cfg.seed, self.steps_done)):
                if decay:
                    param.mul_(1 - lr * decay)
                param.add_(z, alpha=-lr * projected)
        self._lr_holder.step()
        self.scheduler.step()
        self.steps_done += 1
        return lr

    def step(self) -> dict[str, float | None]:
        projected = self.projected / max(self.micro, 1)
        self.projected, self.micro = 0.0, 0
        lr = self.apply(projected)
        return {"lr": lr, "grad_norm": abs(projected)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {"steps_done": self.steps_done, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.steps_done = meta["steps_done"]
        self.scheduler.load_state_dict(meta["scheduler"])
