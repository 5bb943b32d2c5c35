"""``tunelab eval`` as a recipe: an :class:`~tunelab.evaluate.runner.EvalConfig` → the interventions
its options ask for → :func:`tunelab.evaluate.runner.run_eval`.

Evaluation sits below the rooms that act during generation (refusal-token control in
``tunelab.safety``, steering in ``tunelab.inspect``), so it takes them as
:class:`~tunelab.evaluate.intervention.GenerationIntervention` objects; this module, like
:mod:`tunelab.finetune` for the trainer's plug-ins, is where they are built from the options.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluate.intervention import GenerationIntervention
from tunelab.evaluate.results import EvalResult
from tunelab.evaluate.runner import LM_EVAL_PREFIX, EvalConfig
from tunelab.evaluate.runner import run_eval as run_eval_with
from tunelab.results import RunDir


def interventions_for(cfg: EvalConfig) -> list[GenerationIntervention]:
    """The interventions ``cfg``'s options ask for (refusal control, then steering); raises for options that cannot work.

    Everything here is checked before any model is loaded: a bad steering option or vector file
    fails first, as ``EvalConfig.validate`` would.
    """
    from tunelab.inspect.steering import steer_spec
    from tunelab.safety.refusal_tokens import RefusalIntervention, check_control

    out: list[GenerationIntervention] = []
    if cfg.refusal_threshold is not None or cfg.refusal_bias is not None or cfg.refusal_categories is not None:
        if cfg.task is not None and cfg.task.startswith(LM_EVAL_PREFIX):
            raise TunelabError("refusal-token control applies to generation (tasks, the safety suite), not lm-eval tasks")
        check_control(cfg.refusal_threshold, cfg.refusal_bias, cfg.refusal_categories, cfg.refusal_temperature)
        out.append(RefusalIntervention(cfg.refusal_threshold, cfg.refusal_bias, cfg.refusal_categories,
                                       cfg.refusal_temperature))
    spec = steer_spec(cfg.steer, cfg.coeff, cfg.steer_layers, cfg.steer_positions, cfg.steer_mode)
    if spec is not None:
        spec.load()  # a missing or damaged vector file fails before the model loads
        scored = cfg.task is not None and (cfg.task.startswith(LM_EVAL_PREFIX) or cfg.scorer == "choice")
        if spec.positions != "all" and scored:
            raise TunelabError("--steer-positions prompt/last apply to generation; scored tasks steer all positions")
        out.append(spec)
    return out


def run_eval(cfg: EvalConfig, run_dir: RunDir | None = None, *, model: Any = None,
             tokenizer: Any = None) -> EvalResult:
    """The ``tunelab eval`` job: ``run_eval(cfg, run_dir=None, *, model=None, tokenizer=None)``.

    Runs ``cfg``'s task or suite with the interventions its options ask for, writes into
    ``run_dir`` (``None``: ``cfg.run_dir()``, which is ``None`` — nothing written — without
    ``--output`` or ``--adapter``) and returns the typed result: a
    :class:`~tunelab.evaluate.results.TaskResult`, :class:`~tunelab.evaluate.results.LmEvalResult`
    or :class:`~tunelab.evaluate.results.SafetyResult`, carrying its per-example ``records``.
    ``cfg`` is validated first, so its own errors come before those of refusal control and steering.
    """
    cfg.validate()
    return run_eval_with(cfg, run_dir, model=model, tokenizer=tokenizer, interventions=interventions_for(cfg))


__all__ = ["interventions_for", "run_eval"]
