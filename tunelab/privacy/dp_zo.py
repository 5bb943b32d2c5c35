"""DP-ZO: differentially private zeroth-order fine-tuning (Tang et al.).

Zeroth-order training (:class:`~tunelab.train.zo.ZO`) moves the weights along a random
direction ``z`` by one scalar per step, so privatising that scalar privatises the step::

    a_i = (L(θ + φz; x_i) − L(θ − φz; x_i)) / (2φ)     per example; 0 if not finite
    g   = (Σ_i clip(a_i, −C, C) + ξ) / B             ξ ~ N(0, σ²C²) or Laplace(0, bC): ONE draw per step
    θ  ← θ − η · g · z

``B`` is the *expected* batch size of Poisson sampling (also when the drawn batch is empty).
``z`` depends only on the public step seed, so it reveals nothing; the data enter only through
``g``. Memory stays that of inference: no backward, no per-example gradients. Sampling, noise,
accounting and the ledger come from :class:`~tunelab.privacy.dp.PrivateTraining`.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.privacy.dp import PrivateTraining, physical_batches
from tunelab.train.plugins import Run
from tunelab.train.update_rules import LossFn
from tunelab.train.zo import ZO


class DPZO(PrivateTraining, ZO):
    """DP-ZO with Gaussian or Laplace noise; see the module docstring."""

    name = "dp-zo"

    def setup(self, run: Run, params: dict[str, torch.nn.Parameter], total_steps: int) -> None:
        super().setup(run, params, total_steps)
        self.clipped_sum = 0.0

    def projected_gradients(self, loss_fn: LossFn, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_i per example, unclipped, non-finite → 0; the mean of the two losses per example)."""
        chunks = list(physical_batches(batch, self.physical_size()))

        def losses() -> torch.Tensor:
            return torch.cat([loss_fn(chunk, per_example=True) for chunk in chunks])

        plus, minus = self.two_sided(losses)
        projected = ((plus.double() - minus.double()) / (2 * self.eps)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
        return projected, (plus + minus) / 2

    def micro_step(self, loss_fn: LossFn, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if batch["input_ids"].shape[0] == 0:  # an empty Poisson batch: the step is noise only
            return torch.tensor(float("nan"))
        projected, losses = self.projected_gradients(loss_fn, batch)
        clip = self.dp.clip
        self.clipped_sum += float(projected.clamp(-clip, clip).sum())
        return losses.mean().detach()

    def step(self) -> dict[str, float | None]:
        noisy = (self.clipped_sum + self.draw_noise() * self.dp.clip) / self.run_cfg.batch_size
        self.clipped_sum = 0.0
        lr = self.apply(noisy)
        return {"lr": lr, "grad_norm": None}  # the step's scalar is private too

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = ZO.state_dict(self)
        secret_tensors, secret_meta = self.secret_state()
        return {**tensors, **secret_tensors}, {**meta, **secret_meta}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        ZO.load_state_dict(self, tensors, meta)
        self.load_secret_state(tensors, meta)
