"""`tunelab inspect interference|heads|prune|steer train|refusal-direction|salt`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import inspect_app, steer_app
from tunelab.cli.common import console, quiet_libraries, comma_list, print_interference


@inspect_app.command("interference")
def inspect_interference(
    adapters: Annotated[list[Path], typer.Argument(metavar="DIR...", help="adapter / LoTA run dirs")],
    output: Annotated[Path, typer.Option(help="directory for metrics.json")] = Path("interference"),
    model: Annotated[Optional[str], typer.Option(help="base model \\[default: the one the adapters record]")] = None,
    merged: Annotated[Optional[Path], typer.Option(help="a `tunelab merge` output to compare with (needed by --tasks)")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="one task per adapter, comma-separated (`tunelab tasks list`)")] = None,
    limit: Annotated[int, typer.Option(help="examples per task")] = 50,
    seed: Annotated[int, typer.Option(help="task data seed")] = 0,
) -> None:
    """Cosine of ΔW, subspace overlap of A, mask overlap and (with --tasks) single vs merged scores."""
    from tunelab.merge.interference import inspect_interference as run_inspect

    quiet_libraries()
    out = run_inspect(adapters, output, model=model, merged=merged, tasks=tasks.split(",") if tasks else None,
                      limit=limit, seed=seed, progress=True)
    print_interference(out)


@inspect_app.command("heads")
def inspect_heads(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    task: Annotated[Optional[str], typer.Option(help="a benchmark or multiple-choice task \\[default: arc-easy]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="questions \\[default: 200]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="question sample and random-score seed \\[default: 0]")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help="few-shot examples \\[default: 0]")] = None,
    plain: Annotated[Optional[bool], typer.Option("--plain/--chat", help="plain text instead of the chat template \\[default: --chat]")] = None,
    scores: Annotated[Optional[str], typer.Option(help="comma-separated head scores \\[default: all 15 and random]")] = None,
    fractions: Annotated[Optional[str], typer.Option(help="target fractions of heads to zero \\[default: 0,0.05,...,0.3]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="sequences per forward \\[default: 16]")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (scores stay fp32)")] = None,
    attn_implementation: Annotated[Optional[str], typer.Option(help="sdpa or eager \\[default: sdpa]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/heads-TASK or runs/inspect/heads-MODEL-TASK]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="heads.yaml; flags override it")] = None,
) -> None:
    """Inactive attention heads: accuracy vs % of heads zeroed per input, for every score and random."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import HeadsConfig, parse_floats, run_heads

    quiet_libraries()
    cfg = from_sources(HeadsConfig, config, model=model, adapter=adapter, task=task, limit=limit, seed=seed,
                       num_fewshot=num_fewshot, plain=plain, scores=scores.split(",") if scores else None,
                       fractions=parse_floats(fractions, "--fractions") if fractions is not None else None,
                       batch_size=batch_size, bf16=bf16, attn_implementation=attn_implementation, output=output)
    result = run_heads(cfg)
    console.print(f"{result['task']}: unablated accuracy {result['baseline_accuracy']:.3f} on {result['n']} questions", highlight=False)
    for score, pct in sorted(result["largest_within"].items(), key=lambda kv: -kv[1]):
        console.print(f"  {score:28s} {pct:5.1f}% of heads zeroed within 1 point", highlight=False)
    mask = result["static_mask"]
    console.print(f"wrote {result['output_dir']}/metrics.json, heads_accuracy.png, heads_scores.png and "
                  f"{mask['file']} (static mask: {mask['score'] or 'none'}, {mask['static_pct']:.1f}% of heads)", highlight=False)


@inspect_app.command("prune")
def inspect_prune(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir, e.g. a safety adapter (merged first)")] = None,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated: dense, pp, wanda-sp, aapp, aapp-gate \\[default: dense,pp,wanda-sp,aapp]")] = None,
    ratios: Annotated[Optional[str], typer.Option(help="fractions of heads and MLP channels pruned \\[default: 0.2,0.3,0.4]")] = None,
    task: Annotated[Optional[str], typer.Option(help="benchmark for accuracy under pruning \\[default: arc-easy]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="benchmark questions \\[default: 100]")] = None,
    plain: Annotated[Optional[bool], typer.Option("--plain/--chat", help="benchmark as plain text \\[default: --chat]")] = None,
    ppl_data: Annotated[Optional[str], typer.Option(help="rows with a 'text' field for perplexity \\[default: SciQ support paragraphs]")] = None,
    ppl_limit: Annotated[Optional[int], typer.Option(help="perplexity texts \\[default: 100]")] = None,
    calibration_limit: Annotated[Optional[int], typer.Option(help="calibration texts, and AAPP prompts per set \\[default: 64]")] = None,
    safety: Annotated[Optional[bool], typer.Option("--safety/--no-safety", help="refusal rate on held-out HarmBench prompts \\[default: --safety]")] = None,
    safety_limit: Annotated[Optional[int], typer.Option(help="harmful and benign prompts each \\[default: 32]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="safety answers \\[default: 64]")] = None,
    skip: Annotated[Optional[int], typer.Option(help="first layers never pruned \\[default: 3]")] = None,
    protect: Annotated[Optional[float], typer.Option(help="AAPP: share of each block's units kept for alignment \\[default: 0.05]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="\\[default: 8]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="question and prompt sample \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/prune-TASK or runs/inspect/prune-MODEL-TASK]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="prune.yaml; flags override it")] = None,
) -> None:
    """Dense vs Probe Pruning vs Wanda-sp vs alignment-aware pruning: FLOPs saved, perplexity, accuracy, refusals."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import PruneConfig, parse_floats, run_prune

    quiet_libraries()
    cfg = from_sources(PruneConfig, config, model=model, adapter=adapter, methods=methods.split(",") if methods else None,
                       ratios=parse_floats(ratios, "--ratios") if ratios is not None else None, task=task, limit=limit,
                       plain=plain, ppl_data=ppl_data, ppl_limit=ppl_limit, calibration_limit=calibration_limit, safety=safety,
                       safety_limit=safety_limit, max_new_tokens=max_new_tokens, skip=skip, protect=protect,
                       batch_size=batch_size, seed=seed, output=output)
    result = run_prune(cfg)

    def pct(v: object) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{100 * v:.1f}%"

    for r in result["rows"]:
        console.print(f"{r['method']:9s} {r['ratio']:.0%}: FLOPs saved {pct(r['flops_saved'])}, ppl {r['ppl']:.2f}, "
                      f"accuracy {pct(r.get('accuracy'))}, refusal rate {pct(r.get('refusal_rate'))}, "
                      f"over-refusal {pct(r.get('over_refusal'))}", highlight=False)
    console.print(f"wrote {result['output_dir']}/metrics.json", highlight=False)


@steer_app.command("train")
def inspect_steer_train(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="JSONL/JSON/CSV rows with positive, negative (and optionally prompt)")] = None,
    positive: Annotated[Optional[str], typer.Option(help="or: positive prompts, one per line (.txt) or rows with text")] = None,
    negative: Annotated[Optional[str], typer.Option(help="… and as many negative prompts")] = None,
    output: Annotated[Optional[str], typer.Option(help="directory for steering.safetensors, metrics.json, separation.png")] = None,
    method: Annotated[Optional[str], typer.Option(help="mean-diff, pca-diff, pca-center or logistic \\[default: mean-diff]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="layers to train, e.g. 8-20 \\[default: all]")] = None,
    read: Annotated[Optional[str], typer.Option(help="last (last non-pad token) or span (mean over the completion) \\[default: last]")] = None,
    chat: Annotated[Optional[bool], typer.Option("--chat/--plain", help="render prompts through the chat template \\[default: --chat]")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="unit-length vectors \\[default: mean-difference length]")] = None,
    holdout: Annotated[Optional[float], typer.Option(help="share of pairs held out for the layer sweep \\[default: 0.2]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="held-out split \\[default: 0]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="\\[default: 16]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="steer.yaml; flags override it")] = None,
) -> None:
    """Train a steering vector per layer from contrast pairs, with the held-out separation of every layer."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import SteerTrainConfig, run_steer_train
    from tunelab.inspect.steering import parse_layers

    quiet_libraries()
    cfg = from_sources(SteerTrainConfig, config, model=model, adapter=adapter, pairs=pairs, positive=positive, negative=negative,
                       output=output, method=method, layers=parse_layers(layers), read=read, chat=chat, normalize=normalize,
                       holdout=holdout, seed=seed, batch_size=batch_size)
    result = run_steer_train(cfg)
    sep = {int(k): v for k, v in result["separation"].items() if v is not None}
    if sep:
        top = sorted(sep, key=lambda i: -sep[i])[:3]
        console.print(f"{result['n']} pairs, {result['method']}: held-out AUROC best at layer "
                      + ", ".join(f"{i} ({sep[i]:.3f})" for i in top), highlight=False)
    console.print(f"wrote {result['output_dir']}/{result['vector']}, metrics.json and separation.png; apply with "
                  f"tunelab generate --steer {result['output_dir']} --coeff C", highlight=False, markup=False)


@inspect_app.command("refusal-direction")
def inspect_refusal_direction(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir, e.g. a safety adapter (merged first)")] = None,
    harmful_limit: Annotated[Optional[int], typer.Option(help="harmful selection prompts (HarmBench train split) \\[default: 32]")] = None,
    harmless_limit: Annotated[Optional[int], typer.Option(help="harmless selection prompts (train split) \\[default: 32]")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(help="held-out harmful and benign prompts each \\[default: 32]")] = None,
    ce_limit: Annotated[Optional[int], typer.Option(help="held-out passages for cross-entropy \\[default: 32]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="tokens per measured answer \\[default: 48]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="candidate layers, e.g. 4-12 \\[default: those below 80% depth]")] = None,
    positions: Annotated[Optional[str], typer.Option(help="candidate positions counted from the prompt's end, e.g. -1,-2 \\[default: all post-instruction tokens]")] = None,
    refusal_tokens: Annotated[Optional[str], typer.Option(help="comma-separated single tokens the model refuses with \\[default: derived from its answers]")] = None,
    kl_threshold: Annotated[Optional[float], typer.Option(help="KL filter on harmless prompts \\[default: 0.1]")] = None,
    measure: Annotated[Optional[bool], typer.Option("--measure/--no-measure", help="safety and cross-entropy under each intervention \\[default: --measure]")] = None,
    export: Annotated[Optional[str], typer.Option(help="write the orthogonalized model (HF directory) here")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="sequences per forward \\[default: 16]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="benign prompt sample \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/refusal-direction or runs/inspect/refusal-direction-MODEL]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="refusal.yaml; flags override it")] = None,
) -> None:
    """The refusal direction (Arditi et al. 2024): select it, then measure ablation, addition and weight orthogonalisation."""
    from tunelab.configs import from_sources
    from tunelab.inspect.refusal import RefusalConfig, parse_positions, run_refusal
    from tunelab.inspect.steering import parse_layers

    quiet_libraries()
    cfg = from_sources(RefusalConfig, config, model=model, adapter=adapter, harmful_limit=harmful_limit,
                       harmless_limit=harmless_limit, eval_limit=eval_limit, ce_limit=ce_limit, max_new_tokens=max_new_tokens,
                       layers=parse_layers(layers), positions=parse_positions(positions),
                       refusal_tokens=comma_list(refusal_tokens, "--refusal-tokens"), kl_threshold=kl_threshold,
                       measure=measure, export=export, batch_size=batch_size, seed=seed, output=output)
    result = run_refusal(cfg)
    sel, scores, tok = result["selected"], result["selected"]["scores"], result["refusal_tokens"]
    console.print(f"refusal tokens ({tok['source']}): {', '.join(map(repr, tok['tokens']))}; "
                  f"{tok['refused_harmful']}/{tok['n_harmful']} harmful selection prompts refused", highlight=False, markup=False)
    state = "passes the filters" if result["filters_passed"] else f"NO candidate passes the filters: {result['filter_reason']}"
    console.print(f"selected: position {sel['position']} ({sel['token']!r}), layer {sel['layer']} of {result['n_layers']} — "
                  f"ablated refusal score {scores['refusal_score']:+.3f} (baseline {result['baseline']['harmful_refusal_score']:+.3f}), "
                  f"steering score {scores['steering_score']:+.3f}, KL {scores['kl']:.4f}; {state} "
                  f"({result['n_passed']} of {len(result['candidates'])} candidates pass)", highlight=False, markup=False)

    def pct(v: object) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{100 * v:5.1f}%"

    if result["rows"]:
        console.print(f"{'intervention':15s} {'ASR':>7s} {'refusal':>8s} {'over-ref':>8s} {'CE':>7s}", highlight=False)
        for r in result["rows"]:
            ce = "–" if r["ce"] is None else f"{r['ce']:.3f}"
            console.print(f"{r['intervention']:15s} {pct(r['asr']):>7s} {pct(r['refusal_rate']):>8s} {pct(r['over_refusal']):>8s} "
                          f"{ce:>7s}", highlight=False)
    t = result["timing"]
    console.print(f"selection {t['selection_s']:.0f} s ({t['per_candidate_s']:.1f} s per candidate), measurements "
                  f"{t['measurement_s']:.0f} s, total {result['wall_time_s']:.0f} s", highlight=False)
    out = result["output_dir"]
    files = result["files"]
    written = [f"{out}/metrics.json", f"{out}/{files['direction']}", f"{out}/{files['raw']}", f"{out}/{files['plot']}"]
    if files["responses"]:
        written.append(f"{out}/{files['responses']}")
    if files["export"]:
        written.append(f"{files['export']} (orthogonalized model)")
    console.print("wrote " + ", ".join(written), highlight=False, markup=False)


@inspect_app.command("salt")
def inspect_salt(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    n_train: Annotated[Optional[int], typer.Option(help="training items, one contrast pair each \\[default: 64]")] = None,
    n_test: Annotated[Optional[int], typer.Option(help="held-out items answered at each coefficient \\[default: 64]")] = None,
    coeffs: Annotated[Optional[str], typer.Option(help="steering coefficients; 0 (unsteered) always runs \\[default: 0,1,2,3,4]")] = None,
    k_layers: Annotated[Optional[int], typer.Option(help="late layers steered, by held-out separation \\[default: 3]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="layers to steer, e.g. 20-22 (overrides --k-layers)")] = None,
    read: Annotated[Optional[str], typer.Option(help="where pair activations are read: last or span \\[default: last]")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="template answers, or own: the model's greedy answers \\[default: template]")] = None,
    compare_all: Annotated[Optional[bool], typer.Option("--compare-all/--no-compare-all", help="one more row: the best coefficient at every position \\[default: on]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="answer length \\[default: 48]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="\\[default: 16]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="task items and held-out split \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/salt or runs/inspect/salt-MODEL]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="salt.yaml; flags override it")] = None,
) -> None:
    """SALT privacy steering: leak rate and task accuracy vs steering coefficient on synthetic private records."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import parse_floats
    from tunelab.inspect.salt import SaltConfig, run_salt
    from tunelab.inspect.steering import parse_layers

    quiet_libraries()
    cfg = from_sources(SaltConfig, config, model=model, adapter=adapter, n_train=n_train, n_test=n_test,
                       coeffs=parse_floats(coeffs, "--coeffs") if coeffs is not None else None, k_layers=k_layers,
                       layers=parse_layers(layers), read=read, pairs=pairs, compare_all=compare_all,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, output=output)
    r = run_salt(cfg, progress=True)

    def say(text: str) -> None:  # one line each, however narrow the terminal; no secrets in any of them
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    say(f"steering layers {', '.join(map(str, r['layers']))} ({r['layer_source']}); "
        f"{r['n_test']} held-out records, baseline leak rate {r['baseline_leak']:.1%}")
    say(f"{'coeff':>7}  {'positions':9}  {'leak rate [95% CI]':24}  {'accuracy [95% CI]':24}  leak reduction")
    for row in r["rows"]:
        red = "–" if row["leak_reduction"] is None else f"{row['leak_reduction']:+.0%}"
        leak = f"{row['leak_rate']:.1%} [{row['leak_ci'][0]:.1%}, {row['leak_ci'][1]:.1%}]"
        acc = f"{row['accuracy']:.1%} [{row['accuracy_ci'][0]:.1%}, {row['accuracy_ci'][1]:.1%}]"
        say(f"{row['coeff']:>7g}  {row['positions']:9}  {leak:24}  {acc:24}  {red}")
    say(f"wrote {r['output_dir']}/metrics.json, salt_vector.safetensors, salt.png and answers.jsonl ({r['wall_time_s']:.0f} s)")
