"""`tunelab audit safety-depth|privacy|refusal-calibration|multi-turn`: commands made from their configs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.cli.app import audit_app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, quiet_libraries
from tunelab.inspect.multiturn_config import MultiTurnConfig
from tunelab.privacy.audit_config import PrivacyAuditConfig
from tunelab.safety.configs import RefusalCalibrationConfig, SafetyDepthConfig

if TYPE_CHECKING:
    from tunelab.privacy.results import PrivacyAuditResult
    from tunelab.safety.results import RefusalCalibrationResult, SafetyDepthResult


def _safety_depth(cfg: SafetyDepthConfig) -> "SafetyDepthResult":
    from tunelab.safety.depth import run_safety_depth

    quiet_libraries()
    return run_safety_depth(cfg)


def _show_safety_depth(cfg: SafetyDepthConfig, result: "SafetyDepthResult") -> None:
    kl = result.kl["mean"]
    console.print(f"KL(aligned ‖ base) by position: first {kl[0]:.3f}, mean {result.kl_mean:.3f}, last {kl[-1]:.3f}",
                  highlight=False)
    console.print("prefill ASR: " + ", ".join(f"k={r['k']}: {r['asr']:.1%}" for r in result.asr), highlight=False)
    console.print(f"wrote {cfg.output / 'metrics.json'}", highlight=False, markup=False)


config_command(audit_app, "safety-depth", SafetyDepthConfig, _safety_depth, show=_show_safety_depth,
               help="Per-token KL(aligned ‖ base) over response positions and prefilling-attack ASR vs prefilled tokens.")


def _privacy(cfg: PrivacyAuditConfig) -> "PrivacyAuditResult":
    from tunelab.privacy.audit_run import run_privacy_audit

    quiet_libraries()
    return run_privacy_audit(cfg)


def _show_privacy(cfg: PrivacyAuditConfig, result: "PrivacyAuditResult") -> None:
    from rich.table import Table

    from tunelab.privacy.audit_run import headline
    from tunelab.privacy.plugin import summary_line

    table = Table(title=f"{result.canaries.get('family')} canaries: {result.canaries.get('members')} members, "
                        f"{result.canaries.get('non_members')} non-members")
    for col in ("score", *[f"TPR@{f:g}" for f in cfg.fprs], "AUROC", "ε_LB", "ceiling"):
        table.add_column(col, justify="left" if col == "score" else "right")
    for name, s in result.scores.items():
        tprs = ["–" if row["tpr"] is None else f"{row['tpr']:.1%}" for row in s["tpr_at_fpr"]]
        table.add_row(name, *tprs, f"{s['auroc']['value']:.3f}", f"{s['epsilon_lb']:.3f}", f"{s['epsilon_ceiling']:.3f}")
    console.print(table)
    console.print(summary_line(headline(result)), highlight=False)
    console.print(f"wrote {result.output}/metrics.json and scores.jsonl", highlight=False, markup=False)
    if cfg.show_secrets:
        from tunelab.privacy.audit_run import canary_listing

        console.print(canary_listing(cfg), highlight=False, markup=False)


config_command(audit_app, "privacy", PrivacyAuditConfig, _privacy, show=_show_privacy, skip=("k", "bf16"),
               help="Membership-inference audit of canaries: TPR@FPR with CIs, AUROC, one-run ε lower bound beside its ceiling.")


def _refusal_calibration(cfg: RefusalCalibrationConfig) -> "RefusalCalibrationResult":
    from tunelab.safety.refusal_tokens import run_refusal_calibration

    quiet_libraries()
    return run_refusal_calibration(cfg)


def _show_refusal_calibration(cfg: RefusalCalibrationConfig, result: "RefusalCalibrationResult") -> None:
    for row in result.sweep:
        console.print(f"τ={row['threshold']:.2f}: harmful refused {row['harmful_refusal_rate']:.1%}, benign refused "
                      f"{row['benign_refusal_rate']:.1%}, F1 {row['f1']:.3f}", highlight=False)
    console.print(f"best F1 {result.best_f1:.3f} at τ={result.best_threshold:.2f} "
                  f"({result.n_harmful} harmful, {result.n_benign} benign prompts)", highlight=False)
    console.print(f"wrote {cfg.output / 'metrics.json'}", highlight=False, markup=False)


config_command(
    audit_app, "refusal-calibration", RefusalCalibrationConfig, _refusal_calibration, show=_show_refusal_calibration,
    help="Refusal rate on harmful vs benign prompts (and per category) and F1 as the refusal threshold τ varies.",
    skip=("refusal_threshold", "refusal_bias"),  # the sweep varies τ; a bias has no place in it
    overrides={"refusal_categories": {"help": "categorical: categories that may refuse", "show_default": "all"},
               "refusal_temperature": {"help": "T of p = softmax(logits / T)"}},
)


if TYPE_CHECKING:
    from tunelab.inspect.results import MultiTurnResult


def _multi_turn(cfg: MultiTurnConfig) -> MultiTurnResult:
    from tunelab.inspect.multiturn import run_multiturn

    quiet_libraries()
    return run_multiturn(cfg)


def _show_multi_turn(cfg: MultiTurnConfig, r: MultiTurnResult) -> None:
    def ci(v: object) -> str:
        return f" [{v[0]:.3f}, {v[1]:.3f}]" if isinstance(v, list) else ""

    def num(v: object) -> str:
        return "–" if v is None else f"{v:.3f}"

    console.print(f"{r.task}: accuracy turn 1 {r.accuracy[0]:.3f}{ci(r.accuracy_ci[0])} → turn {r.turns} "
                  f"{r.accuracy[-1]:.3f}{ci(r.accuracy_ci[-1])} on {r.n} questions ({r.scoring})", highlight=False)
    inf = f"{r.acc_inf:.3f}{ci(r.acc_inf_ci)}" if r.acc_inf is not None else f"– ({r.acc_inf_reason})"
    console.print(f"Acc∞ {inf}; p_TF {num(r.p_tf)}{ci(r.p_tf_ci)}, p_FT {num(r.p_ft)}{ci(r.p_ft_ci)}",
                  highlight=False, markup=False)
    scored = {k: v for k, v in r.probe.items() if v is not None}
    if scored:
        best = max(scored, key=lambda k: scored[k])
        console.print(f"probe: best layer {best} AUROC {scored[best]:.3f} vs turn-index baseline {num(r.baseline_auroc)} "
                      f"({r.probe_changes} answer changes in {r.probe_examples} follow-ups)", highlight=False)
    else:
        console.print(f"probe: no AUROC ({r.probe_reason})", highlight=False, markup=False)
    console.print(f"wrote {r.output_dir}/metrics.json, multiturn.png and turns.jsonl", highlight=False, markup=False)


config_command(
    audit_app, "multi-turn", MultiTurnConfig, _multi_turn, show=_show_multi_turn, config="multiturn.yaml; flags override it",
    help='Answer stability under "Think again.": accuracy per turn, a Markov-chain fit (Acc∞) and a residual probe.',
    order=["task", "turns", "follow_up", "reword", "model", "adapter", "scorer", "limit", "seed", "layers", "batch_size",
           "max_new_tokens", "bootstrap", "bf16", "output"],
)
