"""``tunelab train`` as a recipe: a :class:`TrainConfig` → the plug-ins its sections need →
:func:`tunelab.train.fit`.

The loop in ``tunelab.train`` knows nothing of safety or privacy; this module composes it with the
plug-ins of those rooms, the way a torchtune recipe composes library parts. Use :func:`train`
for a run as the CLI does it; use ``fit`` with your own plug-ins and update rule to go further.

Config sections
---------------
``TrainConfig`` here is :class:`tunelab.train.TrainConfig` (the loop and the adapter) plus one
section per entry of :data:`SECTIONS`, each declared by its own room with ``option()`` metadata and a
``validate(run)`` for its multi-option rules. In YAML a section is nested or flat; both give the
same config, and a run saves it flat (the shape of older runs, which load unchanged):

=================  =================================================  ======================================
YAML section       options (flat key / flag)                          room, plug-in
=================  =================================================  ======================================
``refusal``        ``tokens`` (``refusal_tokens``)                    safety: ``RefusalTokensPlugin``
``constrained``    ``reference``, ``beta_first``, ``beta_early``,     safety: ``ReferenceLogprobs`` (with
                   ``beta_early_until``, ``beta_late`` (same names)   ``objective: constrained``)
``canary``         ``count`` (``canaries``), ``family``,              privacy: ``CanaryPlugin``
                   ``secret_len``, ``prefix``, ``new_token_rows``
                   (``canary_family``, ...)
``safety_check``   ``eval_limit``, ``max_new_tokens``                 safety: ``SafetyCheck``
                   (``safety_eval_limit``, ``safety_max_new_tokens``)
``monitor``        ``every``, ``prefill``, ``prompts``,               safety: ``SafetyMonitor``
                   ``max_new_tokens``, ``stop_on_refusal_drop``
                   (``monitor_safety``, ``monitor_prefill``,
                   ``monitor_prompts``, ``monitor_max_new_tokens``,
                   ``stop_on_refusal_drop``)
``dp``             ``noise``, ``clip``, ``target_epsilon``,           privacy: the update rules ``dp-zo``,
                   ``target_delta``, ``noise_multiplier``,            ``dp-sgd`` (see :data:`RULES`)
                   ``accountant``, ``physical_batch_size``,
                   ``log_private_metrics`` (same names)
=================  =================================================  ======================================

For example ``dp: {noise_multiplier: 1.0}`` is ``noise_multiplier: 1.0`` is ``--noise-multiplier 1.0``,
and ``canary: {count: 8, family: unigram}`` is ``canaries: 8`` + ``canary_family: unigram``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from tunelab.configs import flat_name, sectioned
from tunelab.options import meta, option
from tunelab.privacy.train_config import CanaryConfig, DPConfig
from tunelab.registry import Registry
from tunelab.safety.monitor import SafetyMonitorConfig
from tunelab.safety.train_config import ConstrainedConfig, RefusalTokensConfig, SafetyCheckConfig
from tunelab.train import Plugin, fit
from tunelab.train import TrainConfig as LoopConfig
from tunelab.train.objectives import BetaSchedule
from tunelab.layout import RUN_FILE
from tunelab.results import RunDir
from tunelab.train.record import TrainRecord
from tunelab.train.run_dir import resumed_config
from tunelab.train.update_rules import UpdateRule


@dataclass(frozen=True)
class Section:
    """One section of the training config: its dataclass, and the plug-in that implements it.

    ``plugin(cfg)`` returns the section's plug-in for a config (``None``: the section is off, or,
    as for ``dp``, an update rule implements it); it raises for options that cannot work.
    """

    config: type
    plugin: Callable[[Any], Plugin | None] = lambda cfg: None


def _refusal_plugin(cfg: Any) -> Plugin | None:
    if not cfg.refusal.tokens:
        return None
    from tunelab.safety.refusal_tokens import RefusalTokensPlugin

    return RefusalTokensPlugin(cfg)


def _constrained_plugin(cfg: Any) -> Plugin | None:
    if cfg.objective != "constrained":
        return None
    from tunelab.safety.constrained import ReferenceLogprobs

    return ReferenceLogprobs(cfg.constrained)


def _canary_plugin(cfg: Any) -> Plugin | None:
    from tunelab.privacy.plugin import CanaryPlugin, canary_spec

    spec = canary_spec(cfg)
    return CanaryPlugin(spec) if spec is not None else None


def _safety_check_plugin(cfg: Any) -> Plugin | None:
    from tunelab.safety.safety_check import SafetyCheck

    return SafetyCheck(cfg.safety_check)  # always given: its record entry is null when the check is off


def _monitor_plugin(cfg: Any) -> Plugin | None:
    if not cfg.monitor.every:
        return None
    from tunelab.safety.monitor import SafetyMonitor

    return SafetyMonitor(cfg.monitor)


# Section name (the YAML key and the config attribute) → its dataclass and plug-in, in hook order.
# Every plug-in option belongs to a section, so every option has its plug-in by construction.
SECTIONS: Registry[Section] = Registry("config section")
SECTIONS.register("refusal", Section(RefusalTokensConfig, _refusal_plugin))
SECTIONS.register("constrained", Section(ConstrainedConfig, _constrained_plugin))
SECTIONS.register("canary", Section(CanaryConfig, _canary_plugin))
SECTIONS.register("safety_check", Section(SafetyCheckConfig, _safety_check_plugin))
SECTIONS.register("monitor", Section(SafetyMonitorConfig, _monitor_plugin))
SECTIONS.register("dp", Section(DPConfig))  # implemented by the dp-zo/dp-sgd update rules

# --optimizer name → its update rule, imported only when used (opacus is heavy to import)
RULES: Registry[type[UpdateRule]] = Registry("optimizer")
RULES.register("adamw", "tunelab.train.update_rules:AdamW")
RULES.register("zo", "tunelab.train.zo:ZO")
RULES.register("dp-zo", "tunelab.privacy.dp_zo:DPZO")
RULES.register("dp-sgd", "tunelab.privacy.dp_sgd:DPSGD")


class _WithSections:
    """What the sections add to the loop's config (mixed into :class:`TrainConfig`)."""

    def validate(self) -> None:
        """The loop's rules, then each section's."""
        LoopConfig.validate(self)  # type: ignore[arg-type]
        for name in SECTIONS:
            getattr(self, name).validate(self)

    def plugin_options_set(self) -> list[str]:
        """Plug-in options (``option(plugin=True)``) set to something other than off/default, by
        their flat names: the sections' first, then the loop's (``objective``)."""
        names = []
        for name in SECTIONS:
            section = getattr(self, name)
            names += [flat_name(f) for f in dataclasses.fields(section)
                      if meta(f, "plugin") and getattr(section, f.name) not in (f.default, 0)]
        return names + LoopConfig.plugin_options_set(self)  # type: ignore[arg-type]

    def beta_schedule(self) -> BetaSchedule:
        """The constrained objective's β by response position."""
        return self.constrained.schedule()  # type: ignore[attr-defined]

    @property
    def private(self) -> bool:
        """A differentially private run (``--optimizer dp-zo``/``dp-sgd``: its rule's ``private``)."""
        return RULES.get(self.optimizer).private  # type: ignore[attr-defined]


# The loop's config plus one field per section, built from SECTIONS (so the two cannot drift);
# the optimizer field takes its names from RULES.
TrainConfig = sectioned(make_dataclass(
    "TrainConfig",
    [("optimizer", str, option("adamw", choices=RULES, show_default="adamw",
                               help="adamw, zo (MeZO zeroth-order), dp-zo or dp-sgd (differentially private)")),
     *[(name, section.config, dataclasses.field(default_factory=section.config)) for name, section in SECTIONS.items()]],
    bases=(_WithSections, LoopConfig),
    namespace={"__doc__": "One ``tunelab train`` run: the loop and adapter (:class:`tunelab.train.TrainConfig`) "
                          "and the plug-ins' sections (see :mod:`tunelab.finetune`).",
               "__module__": __name__},
))


def plugins_for(cfg: Any) -> list[Plugin]:
    """The plug-ins ``cfg``'s sections ask for, in hook order; raises for options that cannot work."""
    plugins = [section.plugin(cfg) for _, section in SECTIONS.items()]
    return [plugin for plugin in plugins if plugin is not None]


def rule_for(cfg: Any) -> UpdateRule:
    """The update rule ``cfg.optimizer`` names."""
    return RULES.get(cfg.optimizer)()


def recipe(cfg: Any) -> tuple[Any, list[Plugin], UpdateRule]:
    """The config as it will run (a resumed run's saved one), its plug-ins and its update rule.

    ``fit(*recipe(cfg))`` is :func:`train`; a caller that composes further (the study hands every arm
    one shared canary set) swaps plug-ins in the list first.
    """
    cfg = resumed_config(cfg)
    if cfg.safety_check.eval_limit is None:
        check = dataclasses.replace(cfg.safety_check, eval_limit=cfg.safety_check.limit_for(cfg))
        cfg = dataclasses.replace(cfg, safety_check=check)
    return cfg, plugins_for(cfg), rule_for(cfg)


def train(cfg: Any, *, stop_after_step: int | None = None, console: Console | None = None) -> Path:
    """Run one ``tunelab train`` job with the plug-ins its options need; return the output directory."""
    cfg, plugins, rule = recipe(cfg)
    return fit(cfg, plugins, rule, stop_after_step=stop_after_step, console=console)


def run_train(cfg: Any, run_dir: RunDir | None = None, *, stop_after_step: int | None = None,
              console: Console | None = None) -> TrainRecord | None:
    """The ``tunelab train`` job: train into ``run_dir`` (``None``: ``--output``) and return the typed
    record it wrote (``tunelab.json``); ``None`` when ``stop_after_step`` ended it before the end."""
    if run_dir is not None:
        cfg = dataclasses.replace(cfg, output=str(run_dir.path))
    out = train(cfg, stop_after_step=stop_after_step, console=console)
    return TrainRecord.read(out) if (out / RUN_FILE).is_file() else None


__all__ = ["RULES", "SECTIONS", "Section", "TrainConfig", "plugins_for", "recipe", "rule_for", "run_train", "train"]
