"""The constrained objective's training plug-in: the reference model's log-probs, once, before training.

The loss itself (:class:`tunelab.train.objectives.ConstrainedLoss`) reads ``ref_logprobs`` from
each batch; this plug-in fills them from the aligned adapter (``--reference``, else
``--init-from``) in one pass over the training set, so the reference never runs per step.
"""

from __future__ import annotations

from tunelab.safety.train_config import ConstrainedConfig
from tunelab.train.objectives import reference_logprobs
from tunelab.train.plugins import Plugin, Run


class ReferenceLogprobs(Plugin):
    """``tunelab train --objective constrained``: precompute log π_ref of every label (section ``constrained``)."""

    claims = ("objective",)

    def __init__(self, section: ConstrainedConfig | None = None) -> None:
        self.section = section or ConstrainedConfig()

    def on_prepared(self, run: Run) -> None:
        from tunelab.evaluate.loading import load_with_adapter

        cfg = run.cfg
        reference = self.section.reference or cfg.init_from
        run.console.print(f"reference log-probs from {reference} ({len(run.examples)} examples)")
        ref_model, _ = load_with_adapter(cfg.model, reference)
        reference_logprobs(ref_model.to(run.accelerator.device), run.examples, run.tokenizer.pad_token_id,
                           batch_size=cfg.batch_size)
