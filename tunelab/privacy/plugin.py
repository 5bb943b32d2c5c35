"""``tunelab train --canaries M``: a run that plants canaries and audits its own memorisation.

Hooks (see :mod:`tunelab.train.plugins`):

* ``on_data``: keeps the raw records (``bigram``/``unigram-corpus`` secrets and ``data``-shaped
  prefixes are drawn from them); the chats are unchanged.
* ``on_model``: makes the canary set (seeded by the run's seed; a resumed run reloads the saved
  one), adds ``new-token`` tokens and makes their embedding rows trainable (as refusal tokens
  are), and inserts each member once at a seeded random position of ``run.chats``.
* ``on_prepared``: the run record gets the set's description (never the secrets).
* ``on_start``: ``canaries.json`` (with membership) is saved beside the run.
* ``on_finish``: the saved run is audited exactly as ``tunelab audit privacy RUN`` audits it
  (secret-span loss, δ = 1e-5, significance 0.05, Bonferroni); ``tunelab.json`` gets
  ``privacy: {epsilon_lb, epsilon_ceiling, tpr_at_1pct_fpr, ...}``.

Nothing else about the run changes: the canaries are drawn from their own generators (the
global torch RNG is left as it was), the user's records keep their order, and the other options
mean what they mean without canaries.
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.privacy.audit_run import CANARY_FILE, PrivacyAuditConfig, describe, headline, run_privacy_audit
from tunelab.privacy.canaries import CanarySet, insert_members, make_canaries
from tunelab.privacy.train_config import CanaryConfig
from tunelab.train.plugins import Plugin, Run

CanarySpec = CanaryConfig  # what to plant: the ``canary`` section of ``tunelab train``'s config


def canary_spec(cfg: Any) -> CanarySpec | None:
    """The canaries ``cfg``'s ``canary`` section asks for (None: none); raises for options that cannot work."""
    section: CanaryConfig = cfg.canary
    section.validate(cfg)  # bad values fail before any data or model is read
    return section if section.count else None


class CanaryPlugin(Plugin):
    """Plants canaries (a :class:`CanarySpec` to draw, or a ready :class:`CanarySet`) and audits the run."""

    claims = ("canaries",)

    def __init__(self, canaries: CanarySpec | CanarySet, *, audit: bool = True, insert_seed: int | None = None) -> None:
        self.spec = canaries if isinstance(canaries, CanarySpec) else None
        self.canary_set = canaries if isinstance(canaries, CanarySet) else None
        self.audit = audit
        self.insert_seed = insert_seed  # None: the run's seed (a study fixes it: the same positions in every arm)
        self.records: list[Any] = []
        self.token_ids: list[int] = []
        self.warning: str | None = None

    def on_data(self, run: Run, rows: list[tuple[str, Any]], chats: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
        if self.spec is not None:
            self.warning = self.spec.check(run.cfg.method)
        self.records = [row for _, row in rows]
        return chats

    def on_model(self, run: Run) -> None:
        saved = run.out / CANARY_FILE
        if run.resumed and saved.is_file():
            self.canary_set = CanarySet.load(saved)  # the very set the interrupted run trained on
        elif self.canary_set is None:
            assert self.spec is not None
            spec = self.spec
            with torch.random.fork_rng(devices=[]):  # unigram runs the model: leave the run's RNG as it was
                self.canary_set = make_canaries(
                    spec.family, spec.count, spec.secret_len, run.cfg.seed, run.tokenizer, data_rows=self.records,
                    model=run.model if spec.family == "unigram" else None, prefix_style=spec.prefix)
        cs = self.canary_set
        if cs.new_tokens:
            from tunelab.adapters import get_method

            if self.spec is None:
                CanarySpec(len(cs), cs.family).check(run.cfg.method)
            self.token_ids = cs.add_new_tokens(run.model, run.tokenizer)
            if get_method(run.cfg.method).is_peft and (self.spec is None or self.spec.new_token_rows == "trained"):
                run.settings.trainable_token_indices = tuple(run.settings.trainable_token_indices) + tuple(self.token_ids)
        if self.warning and run.accelerator.is_main_process:
            run.console.print(f"[yellow]warning:[/] {self.warning}")
        run.chats = insert_members(run.chats, cs, self._insert_seed(run))

    def _insert_seed(self, run: Run) -> int:
        return run.cfg.seed if self.insert_seed is None else self.insert_seed

    def on_prepared(self, run: Run) -> None:
        assert self.canary_set is not None
        if self.token_ids:
            run.prepared.state["added_tokens"] = list(run.prepared.state.get("added_tokens") or []) + self.token_ids
        run.prepared.record["canaries"] = {**describe(self.canary_set), "file": CANARY_FILE, "insert_seed": self._insert_seed(run),
                                           "new_token_rows": self.spec.new_token_rows if self.spec else None,
                                           "warning": self.warning}

    def on_start(self, run: Run) -> None:
        assert self.canary_set is not None
        if not (run.out / CANARY_FILE).is_file():
            self.canary_set.save(run.out / CANARY_FILE)

    def on_finish(self, run: Run, record: dict[str, Any]) -> None:
        record["privacy"] = None
        if not self.audit:
            return
        run.console.print(f"privacy audit: scoring {len(self.canary_set or [])} canaries")
        result = run_privacy_audit(PrivacyAuditConfig(run=str(run.out), model=run.cfg.model))
        record["privacy"] = headline(result)  # the CLI prints it (summary_line) with the run's summary


def summary_line(head: dict[str, Any]) -> str:
    """``ε_LB 0.52 (ceiling 5.09, m=1000, δ=1e-05) · TPR@1%FPR 3.2% · AUROC 0.61`` for a headline."""
    tpr = head.get("tpr_at_1pct_fpr")
    shown = f"{tpr:.1%}" if tpr is not None else "refused (< 100 non-members)"
    return (f"privacy ({head['family']}, {head['score']}): ε_LB {head['epsilon_lb']:.3f} "
            f"(ceiling {head['epsilon_ceiling']:.3f} with m={head.get('audited_m', head['m'])}, δ={head['delta']:g}) · "
            f"TPR@1%FPR {shown} · AUROC {head['auroc']:.3f}")


__all__ = ["CanaryPlugin", "CanarySpec", "canary_spec", "summary_line"]
