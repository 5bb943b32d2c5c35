"""What every differentially private update rule shares: sampling, noise, accounting, hygiene.

:class:`PrivateTraining` is a mixin for :class:`~tunelab.train.update_rules.UpdateRule`\\ s
(:class:`~tunelab.privacy.dp_zo.DPZO`, :class:`~tunelab.privacy.dp_sgd.DPSGD`). Through the
rule hooks of the training loop it

* **calibrates** the noise before the output directory is touched (``prepare``): σ or b from
  ``--target-epsilon``/``--target-delta`` with dp-accounting, or the ε that ``--noise-multiplier``
  spends; an unreachable target is a one-line error;
* **samples** each step's batch by Poisson sampling (``batches``): every example joins on its own
  coin with rate ``q = B/N`` — batches vary in size and may be empty, which is what the accountant
  assumes (fixed-size shuffled batches are not);
* **draws noise** and the sampling coins from OS entropy, not from ``--seed``: a recorded seed
  would let anyone replay the noise and subtract it. The secret lives in the checkpoint (so a
  resumed run equals an uninterrupted one) and is deleted with it when the run finishes;
* keeps the **training loss** out of logs, progress bar and record unless ``--log-private-metrics``;
* shows **ε spent so far** on the progress bar and writes the **ledger** to ``tunelab.json``.

The neighbouring relation is add/remove one example (:data:`~tunelab.privacy.accounting.NEIGHBOURING`).
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any, Iterator

import numpy as np
import torch

from tunelab.adapters import ADAPTER_METHODS, methods_with
from tunelab.errors import TunelabError
from tunelab.privacy.accounting import Ledger, calibrate_noise, spent_epsilon
from tunelab.privacy.train_config import DPConfig
from tunelab.registry import join_names
from tunelab.train.plugins import Run
from tunelab.train.update_rules import require_one_process

_NOTE_EVERY_S = 30.0  # PLD accounting takes ~0.5 s: refresh the progress bar's ε at most this often


class PoissonBatches:
    """Batch sampler of a DP run: step ``t`` takes each of ``n`` examples with probability ``q``.

    The coins come from ``(seed, t)``, so a resumed run (same secret seed, restored from the
    checkpoint before iteration starts) draws exactly the batches of an uninterrupted one.
    """

    def __init__(self, n: int, q: float, steps: int) -> None:
        self.n, self.q, self.steps = n, q, steps
        self.seed: int | None = None

    def __len__(self) -> int:
        return self.steps

    def batch(self, step: int) -> list[int]:
        """The indices of step ``step``'s batch (possibly none)."""
        if self.seed is None:
            raise RuntimeError("PoissonBatches.seed is not set")
        coins = np.random.default_rng([self.seed, step]).random(self.n)
        return np.flatnonzero(coins < self.q).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self.batch(t) for t in range(self.steps))


def physical_batches(batch: dict[str, torch.Tensor], size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Split a (right-padded) batch into chunks of at most ``size`` rows, each trimmed to its longest row."""
    rows = batch["input_ids"].shape[0]
    for start in range(0, rows, size):
        chunk = {k: v[start : start + size] for k, v in batch.items()}
        width = int(chunk["attention_mask"].sum(dim=1).max())
        yield {k: v[:, :width] for k, v in chunk.items()}


class PrivateTraining:
    """Mixin for DP update rules; see the module docstring. ``secret_seed`` pins the noise and
    sampling (tests only: a known seed voids the guarantee)."""

    per_example = True
    private = True

    def __init__(self, secret_seed: int | None = None) -> None:
        self.secret_seed = secrets.randbits(63) if secret_seed is None else secret_seed
        self.noise_generator = torch.Generator().manual_seed(self.secret_seed)
        self.sampler: PoissonBatches | None = None
        self._note: tuple[float, int, str] = (-math.inf, -1, "")

    # -- the rule hooks ---------------------------------------------------------------------
    def prepare(self, run: Run) -> None:
        require_one_process(run)  # Poisson sampling and the secret noise live in one process
        cfg = run.cfg
        self.run_cfg = cfg
        dp = self.dp
        n = len(run.examples)
        if cfg.batch_size > n:
            raise TunelabError(f"--batch-size {cfg.batch_size} is the expected batch of Poisson sampling; "
                               f"it must not exceed the {n} training examples")
        self.n, self.q = n, cfg.batch_size / n
        self.total_steps = cfg.max_steps or max(1, round(cfg.epochs * n / cfg.batch_size))
        self.delta = dp.delta
        if self.delta >= 1.0 / n:
            run.console.print(f"[yellow]warning:[/] δ = {self.delta:g} ≥ 1/N = {1 / n:.3g}: a mechanism that publishes "
                              "one random example outright meets such a δ; use δ ≪ 1/N")
        if dp.noise_multiplier is not None:
            self.noise = dp.noise_multiplier
        else:
            self.noise = calibrate_noise(dp.noise, self.q, self.total_steps, dp.target_epsilon, self.delta, dp.accountant)
        self.outside = self.outside_guarantee(cfg)
        for note in self.outside:
            run.console.print(f"[yellow]warning:[/] {note}")
        self.planned_epsilon = self.epsilon(self.total_steps)
        run.console.print(f"{cfg.optimizer}: {dp.noise} noise {'σ' if dp.noise == 'gaussian' else 'b'} = "
                          f"{self.noise:.4g}·C (C = {dp.clip:g}), q = {self.q:.4g}, {self.total_steps} steps → "
                          f"(ε = {self.planned_epsilon:.3g}, δ = {self.delta:g}) by {dp.accountant.upper()}")

    @staticmethod
    def outside_guarantee(cfg: Any) -> list[str]:
        """What shapes this run outside the DP steps (the ledger lists it); LoTA is refused outright."""
        if ADAPTER_METHODS.get(cfg.method).calibrates_on_data:
            raise TunelabError(f"--method {cfg.method} picks its mask with a non-private AdamW pass over --data; not supported "
                               f"with --optimizer {cfg.optimizer} (use {join_names(methods_with('calibrates_on_data', False))})")
        notes = []
        for flag, value in (("--mask-from", cfg.mask_from), ("--init-from", cfg.init_from)):
            if value:
                notes.append(f"{flag} {value}: that run's training is not covered by this run's ε; "
                             "if it saw this data, the guarantee does not hold for it")
        return notes

    def batches(self, run: Run) -> tuple[PoissonBatches, int]:
        self.sampler = PoissonBatches(self.n, self.q, self.total_steps)
        self.sampler.seed = self.secret_seed
        return self.sampler, self.total_steps

    def logs_loss(self) -> bool:
        return self.dp.log_private_metrics

    def progress_note(self) -> str:
        steps = self.dp_steps_done()
        last_time, last_steps, text = self._note
        if steps != last_steps and (time.monotonic() - last_time > _NOTE_EVERY_S or steps == self.total_steps):
            text = f"ε {self.epsilon(steps):.2f}/{self.planned_epsilon:.2f}" if steps else f"ε 0/{self.planned_epsilon:.2f}"
            self._note = (time.monotonic(), steps, text)
        return text

    def record(self) -> dict[str, Any]:
        return {"dp": self.ledger().as_dict()}

    # -- shared by the DP rules --------------------------------------------------------------
    @property
    def dp(self) -> DPConfig:
        """The run's ``dp`` section (the options of this rule)."""
        return self.run_cfg.dp

    def dp_steps_done(self) -> int:
        """Optimizer steps taken so far (each one a use of the private data): the rule's ``steps_done``."""
        return getattr(self, "steps_done", 0)  # 0 before setup

    def epsilon(self, steps: int) -> float:
        """ε spent after ``steps`` steps at the run's δ."""
        dp = self.dp
        return spent_epsilon(dp.noise, self.q, steps, self.noise, self.delta, dp.accountant) if steps else 0.0

    def ledger(self) -> Ledger:
        """The run's privacy record, for the steps taken so far."""
        cfg, dp, steps = self.run_cfg, self.dp, self.dp_steps_done()
        return Ledger(mechanism=f"{cfg.optimizer} ({dp.noise})", sample_rate=self.q, expected_batch_size=cfg.batch_size,
                      examples=self.n, noise_multiplier=self.noise, clip=dp.clip, steps=steps,
                      accountant=dp.accountant, delta=self.delta, epsilon=self.epsilon(steps),
                      target_epsilon=dp.target_epsilon, private_metrics_logged=dp.log_private_metrics,
                      outside_guarantee=tuple(self.outside))

    def physical_size(self) -> int:
        return self.dp.physical_batch_size or self.run_cfg.batch_size

    def draw_noise(self) -> float:
        """One draw of the step's scalar noise in units of C: N(0, σ²) or Laplace(0, b)."""
        if self.dp.noise == "gaussian":
            return float(torch.randn((), generator=self.noise_generator, dtype=torch.float64)) * self.noise
        u = float(torch.rand((), generator=self.noise_generator, dtype=torch.float64)) - 0.5
        return -self.noise * math.copysign(1.0, u) * math.log1p(-2 * abs(u))

    def secret_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """What a checkpoint keeps of the secret randomness (deleted with the checkpoint)."""
        return {"dp.noise_generator": self.noise_generator.get_state()}, {"secret_seed": self.secret_seed}

    def load_secret_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.secret_seed = meta["secret_seed"]
        self.noise_generator.set_state(tensors["dp.noise_generator"])
        if self.sampler is not None:
            self.sampler.seed = self.secret_seed


def ledger_line(ledger: dict[str, Any]) -> str:
    """One line of a run's ledger (``tunelab.json``'s ``dp``), as the CLI prints it."""
    symbol = "σ" if "gaussian" in ledger["mechanism"] else "b"
    logged = "; training loss logged (not covered)" if ledger["private_metrics_logged"] else ""
    return (f"privacy ledger: {ledger['mechanism']}, (ε = {ledger['epsilon']:.3g}, δ = {ledger['delta']:g}) spent by "
            f"{ledger['accountant'].upper()} over {ledger['steps']} steps, q = {ledger['sample_rate']:.4g}, "
            f"{symbol} = {ledger['noise_multiplier']:.4g}, C = {ledger['clip']:g}, {ledger['neighbouring']}{logged}")
