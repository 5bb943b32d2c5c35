"""`tunelab audit safety-depth|privacy|refusal-calibration|multi-turn`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import audit_app
from tunelab.cli.common import console, quiet_libraries, comma_list, float_item
from tunelab.errors import TunelabError


@audit_app.command("safety-depth")
def audit_safety_depth(
    model: Annotated[str, typer.Option(help="the aligned model (alias, dir or hub id)")] = "smollm2-135m",
    adapter: Annotated[Optional[str], typer.Option(help="the aligned model's adapter / run dir")] = None,
    base: Annotated[Optional[str], typer.Option(help="the base model to compare with \\[default: --model]")] = None,
    base_adapter: Annotated[Optional[str], typer.Option(help="an adapter on the base")] = None,
    positions: Annotated[int, typer.Option(help="response positions of the KL profile")] = 20,
    limit: Annotated[Optional[int], typer.Option(help="first N HarmBench test prompts \\[default: all]")] = None,
    ks: Annotated[str, typer.Option(help="prefilled token counts of the prefilling attack")] = "0,5,10,20,40",
    max_new_tokens: Annotated[int, typer.Option(help="continuation length after the prefill")] = 64,
    batch_size: Annotated[int, typer.Option()] = 8,
    opening: Annotated[Optional[str], typer.Option(help="compliant opening to force: text, 'heldout' for tunelab's second one \\[default: the one augment-recovery trains on]")] = None,
    output: Annotated[Path, typer.Option(help="directory for metrics.json")] = Path("runs/safety-depth"),
) -> None:
    """Per-token KL(aligned ‖ base) over response positions and prefilling-attack ASR vs prefilled tokens."""
    from tunelab.safety.depth import AFFIRMATIVE_OPENING, HELDOUT_OPENING, check_inputs, parse_ks, run_safety_depth

    quiet_libraries()
    k_list = parse_ks(ks)
    check_inputs(positions, limit, k_list, [adapter, base_adapter])
    if max_new_tokens < 1 or batch_size < 1:
        raise TunelabError("--max-new-tokens and --batch-size must be >= 1")
    text = {None: AFFIRMATIVE_OPENING, "heldout": HELDOUT_OPENING}.get(opening, opening)
    if not text or not text.strip():
        raise TunelabError("--opening must not be empty")
    metrics = run_safety_depth(model, base or model, output, adapter=adapter, base_adapter=base_adapter, positions=positions,
                               limit=limit, ks=k_list, max_new_tokens=max_new_tokens, batch_size=batch_size, opening=text)
    kl = metrics["kl"]["mean"]
    console.print(f"KL(aligned ‖ base) by position: first {kl[0]:.3f}, mean {metrics['kl_mean']:.3f}, last {kl[-1]:.3f}",
                  highlight=False)
    console.print("prefill ASR: " + ", ".join(f"k={r['k']}: {r['asr']:.1%}" for r in metrics["asr"]), highlight=False)
    console.print(f"wrote {output / 'metrics.json'}", highlight=False, markup=False)


@audit_app.command("privacy")
def audit_privacy(
    run: Annotated[Optional[str], typer.Argument(help="a run that trained with --canaries")] = None,
    model: Annotated[Optional[str], typer.Option(help="base model \\[default: the run's]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="adapter / run dir to audit \\[default: RUN]")] = None,
    canaries: Annotated[Optional[str], typer.Option(help="canary file: a tunelab canary set, or records with a boolean 'member' \\[default: RUN/canaries.json]")] = None,
    score: Annotated[str, typer.Option(help="comma-separated: secret_loss, sequence_loss, min_k, zlib, reference (the first is the headline)")] = "secret_loss",
    fpr: Annotated[str, typer.Option(help="comma-separated FPRs for TPR@FPR")] = "0.001,0.01,0.1",
    delta: Annotated[float, typer.Option(help="δ of the one-run ε lower bound")] = 1e-5,
    significance: Annotated[float, typer.Option(help="significance of the ε lower bound")] = 0.05,
    threshold_strategy: Annotated[str, typer.Option(help="bonferroni (over candidate thresholds) or split (choose on half, bound on the other)")] = "bonferroni",
    bootstrap_samples: Annotated[int, typer.Option(help="bootstrap resamples for the CIs; 0: no CIs")] = 1000,
    batch_size: Annotated[int, typer.Option()] = 32,
    seed: Annotated[int, typer.Option(help="bootstrap and split seed")] = 0,
    output: Annotated[Optional[str], typer.Option(help="directory for metrics.json and scores.jsonl \\[default: RUN/eval/privacy]")] = None,
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="also print every canary with its secret and membership")] = False,
) -> None:
    """Membership-inference audit of canaries: TPR@FPR with CIs, AUROC, one-run ε lower bound beside its ceiling."""
    from rich.table import Table

    from tunelab.privacy.audit_run import PrivacyAuditConfig, headline, run_privacy_audit
    from tunelab.privacy.plugin import summary_line

    quiet_libraries()
    fprs = [float_item(item, "--fpr") for item in comma_list(fpr, "--fpr") or []]
    cfg = PrivacyAuditConfig(run=run, model=model, adapter=adapter, canaries=canaries, scores=comma_list(score, "--score") or [],
                             fprs=fprs, delta=delta, significance=significance, threshold_strategy=threshold_strategy,
                             bootstrap_samples=bootstrap_samples, batch_size=batch_size, seed=seed, output=output)
    metrics = run_privacy_audit(cfg)
    table = Table(title=f"{metrics['canaries'].get('family')} canaries: {metrics['canaries'].get('members')} members, "
                        f"{metrics['canaries'].get('non_members')} non-members")
    for col in ("score", *[f"TPR@{f:g}" for f in fprs], "AUROC", "ε_LB", "ceiling"):
        table.add_column(col, justify="left" if col == "score" else "right")
    for name, s in metrics["scores"].items():
        tprs = ["–" if row["tpr"] is None else f"{row['tpr']:.1%}" for row in s["tpr_at_fpr"]]
        table.add_row(name, *tprs, f"{s['auroc']['value']:.3f}", f"{s['epsilon_lb']:.3f}", f"{s['epsilon_ceiling']:.3f}")
    console.print(table)
    console.print(summary_line(headline(metrics)), highlight=False)
    console.print(f"wrote {metrics['output']}/metrics.json and scores.jsonl", highlight=False, markup=False)
    if show_secrets:
        from tunelab.privacy.audit_run import canary_listing

        console.print(canary_listing(cfg), highlight=False, markup=False)


@audit_app.command("refusal-calibration")
def audit_refusal_calibration(
    model: Annotated[str, typer.Option(help="the base model (alias, dir or hub id)")] = "smollm2-135m",
    adapter: Annotated[Optional[str], typer.Option(help="a run trained with --refusal-tokens")] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="comma-separated τ values in [0, 1] \\[default: 0, 0.01, ..., 0.99, 1]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="first N prompts of each test set \\[default: all]")] = None,
    refusal_categories: Annotated[Optional[str], typer.Option(help="categorical: categories that may refuse \\[default: all]")] = None,
    refusal_temperature: Annotated[float, typer.Option(help="T of p = softmax(logits / T)")] = 1.0,
    batch_size: Annotated[int, typer.Option()] = 16,
    output: Annotated[Path, typer.Option(help="directory for metrics.json")] = Path("runs/refusal-calibration"),
) -> None:
    """Refusal rate on harmful vs benign prompts (and per category) and F1 as the refusal threshold τ varies."""
    from tunelab.safety.refusal_tokens import parse_categories, parse_thresholds, run_refusal_calibration

    quiet_libraries()
    taus = parse_thresholds(thresholds)
    metrics = run_refusal_calibration(model, adapter, output, thresholds=taus, limit=limit,
                                      categories=parse_categories(refusal_categories), temperature=refusal_temperature,
                                      batch_size=batch_size)
    for row in metrics["sweep"]:
        console.print(f"τ={row['threshold']:.2f}: harmful refused {row['harmful_refusal_rate']:.1%}, benign refused "
                      f"{row['benign_refusal_rate']:.1%}, F1 {row['f1']:.3f}", highlight=False)
    console.print(f"best F1 {metrics['best_f1']:.3f} at τ={metrics['best_threshold']:.2f} "
                  f"({metrics['n_harmful']} harmful, {metrics['n_benign']} benign prompts)", highlight=False)
    console.print(f"wrote {output / 'metrics.json'}", highlight=False, markup=False)


@audit_app.command("multi-turn")
def audit_multi_turn(
    task: Annotated[Optional[str], typer.Option(help="a benchmark, arithmetic, reverse_words, or a task file with --scorer \\[default: arc-easy]")] = None,
    turns: Annotated[Optional[int], typer.Option(help="turns, the first answer included \\[default: 9]")] = None,
    follow_up: Annotated[Optional[str], typer.Option(help="what the user says after each answer \\[default: 'Think again.']")] = None,
    reword: Annotated[Optional[bool], typer.Option("--reword/--no-reword", help="the follow-up also restates the question \\[default: --no-reword]")] = None,
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="for a task file: choice, numeric, exact or contains")] = None,
    limit: Annotated[Optional[int], typer.Option(help="questions \\[default: 100]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="question sample and bootstrap seed \\[default: 0]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="probe layers, e.g. 3,6,9 \\[default: every 3rd layer and the last]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="sequences per forward \\[default: 16]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="text-scored tasks: answer length \\[default: 32]")] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="bootstrap resamples for the CIs; 0: none \\[default: 1000]")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/multiturn-TASK or runs/inspect/multiturn-MODEL-TASK]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="multiturn.yaml; flags override it")] = None,
) -> None:
    """Answer stability under "Think again.": accuracy per turn, a Markov-chain fit (Acc∞) and a residual probe."""
    from tunelab.configs import from_sources
    from tunelab.inspect.multiturn import MultiTurnConfig, run_multiturn
    from tunelab.inspect.steering import parse_layers

    quiet_libraries()
    cfg = from_sources(MultiTurnConfig, config, task=task, turns=turns, follow_up=follow_up, reword=reword, model=model,
                       adapter=adapter, scorer=scorer, limit=limit, seed=seed, layers=parse_layers(layers),
                       batch_size=batch_size, max_new_tokens=max_new_tokens, bootstrap=bootstrap, bf16=bf16, output=output)
    r = run_multiturn(cfg)

    def ci(v: object) -> str:
        return f" [{v[0]:.3f}, {v[1]:.3f}]" if isinstance(v, list) else ""

    def num(v: object) -> str:
        return "–" if v is None else f"{v:.3f}"

    console.print(f"{r['task']}: accuracy turn 1 {r['accuracy'][0]:.3f}{ci(r['accuracy_ci'][0])} → turn {r['turns']} "
                  f"{r['accuracy'][-1]:.3f}{ci(r['accuracy_ci'][-1])} on {r['n']} questions ({r['scoring']})", highlight=False)
    inf = f"{r['acc_inf']:.3f}{ci(r['acc_inf_ci'])}" if r["acc_inf"] is not None else f"– ({r['acc_inf_reason']})"
    console.print(f"Acc∞ {inf}; p_TF {num(r['p_tf'])}{ci(r['p_tf_ci'])}, p_FT {num(r['p_ft'])}{ci(r['p_ft_ci'])}",
                  highlight=False, markup=False)
    scored = {k: v for k, v in r["probe"].items() if v is not None}
    if scored:
        best = max(scored, key=lambda k: scored[k])
        console.print(f"probe: best layer {best} AUROC {scored[best]:.3f} vs turn-index baseline {num(r['baseline_auroc'])} "
                      f"({r['probe_changes']} answer changes in {r['probe_examples']} follow-ups)", highlight=False)
    else:
        console.print(f"probe: no AUROC ({r['probe_reason']})", highlight=False, markup=False)
    console.print(f"wrote {r['output_dir']}/metrics.json, multiturn.png and turns.jsonl", highlight=False, markup=False)
