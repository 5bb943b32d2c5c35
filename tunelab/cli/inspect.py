"""`tunelab inspect interference|heads|prune|steer train|refusal-direction|salt`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from tunelab.cli.app import inspect_app, steer_app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, print_interference, quiet_libraries
from tunelab.cli.lazy import lazy_config_command
from tunelab.merge.interference_config import InterferenceConfig

if TYPE_CHECKING:
    from tunelab.inspect.results import HeadsResult, PruningResult, RefusalDirectionResult, SaltResult, SteeringResult
    from tunelab.merge.results import InterferenceResult


def _quiet(run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` with transformers' progress bars and warnings silenced first."""
    def quiet_run(cfg: Any) -> Any:
        quiet_libraries()
        return run(cfg)

    return quiet_run


# --------------------------------------------------------------------------- interference
def _interference(cfg: InterferenceConfig) -> InterferenceResult:
    from tunelab.merge.interference import inspect_interference

    quiet_libraries()
    return inspect_interference(cfg, progress=True)


def _show_interference(cfg: InterferenceConfig, result: InterferenceResult) -> None:
    print_interference(cfg.run_dir().path, result)


config_command(inspect_app, "interference", InterferenceConfig, _interference, show=_show_interference,
               help="Cosine of ΔW, subspace overlap of A, mask overlap and (with --tasks) single vs merged scores.")


# --------------------------------------------------------------------------- heads
def _load_heads() -> dict[str, Any]:
    from tunelab.inspect.run import HeadsConfig, run_heads

    return dict(config_cls=HeadsConfig, run=_quiet(run_heads), show=_show_heads, config="heads.yaml; flags override it")


def _show_heads(cfg: Any, result: HeadsResult) -> None:
    console.print(f"{result.task}: unablated accuracy {result.baseline_accuracy:.3f} on {result.n} questions", highlight=False)
    for score, pct in sorted(result.largest_within.items(), key=lambda kv: -kv[1]):
        console.print(f"  {score:28s} {pct:5.1f}% of heads zeroed within 1 point", highlight=False)
    mask = result.static_mask
    console.print(f"wrote {result.output_dir}/metrics.json, heads_accuracy.png, heads_scores.png and "
                  f"{mask['file']} (static mask: {mask['score'] or 'none'}, {mask['static_pct']:.1f}% of heads)", highlight=False)


lazy_config_command(inspect_app, "heads", load=_load_heads,
                    help="Inactive attention heads: accuracy vs % of heads zeroed per input, for every score and random.")


# --------------------------------------------------------------------------- prune
def _load_prune() -> dict[str, Any]:
    from tunelab.inspect.run import PruneConfig, run_prune

    return dict(config_cls=PruneConfig, run=_quiet(run_prune), show=_show_prune, config="prune.yaml; flags override it",
                skip=("num_fewshot", "max_length"))


def _show_prune(cfg: Any, result: PruningResult) -> None:
    def pct(v: object) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{100 * v:.1f}%"

    for r in result.rows:
        console.print(f"{r['method']:9s} {r['ratio']:.0%}: FLOPs saved {pct(r['flops_saved'])}, ppl {r['ppl']:.2f}, "
                      f"accuracy {pct(r.get('accuracy'))}, refusal rate {pct(r.get('refusal_rate'))}, "
                      f"over-refusal {pct(r.get('over_refusal'))}"
                      + (f", degenerate {pct(r['degenerate_rate'])}" if r.get("degenerate_rate") is not None else ""),
                      highlight=False)
    console.print(f"wrote {result.output_dir}/metrics.json", highlight=False)


lazy_config_command(inspect_app, "prune", load=_load_prune,
                    help="Dense vs Probe Pruning vs Wanda-sp vs alignment-aware pruning: FLOPs saved, perplexity, accuracy, refusals.")


# --------------------------------------------------------------------------- steer train
def _load_steer_train() -> dict[str, Any]:
    from tunelab.inspect.run import SteerTrainConfig, run_steer_train

    return dict(config_cls=SteerTrainConfig, run=_quiet(run_steer_train), show=_show_steer_train,
                config="steer.yaml; flags override it")


def _show_steer_train(cfg: Any, result: SteeringResult) -> None:
    sep = {int(k): v for k, v in result.separation.items() if v is not None}
    if sep:
        top = sorted(sep, key=lambda i: -sep[i])[:3]
        console.print(f"{result.n} pairs, {result.method}: held-out AUROC best at layer "
                      + ", ".join(f"{i} ({sep[i]:.3f})" for i in top), highlight=False)
    console.print(f"wrote {result.output_dir}/{result.vector}, metrics.json and separation.png; apply with "
                  f"tunelab generate --steer {result.output_dir} --coeff C", highlight=False, markup=False)


lazy_config_command(steer_app, "train", load=_load_steer_train,
                    help="Train a steering vector per layer from contrast pairs, with the held-out separation of every layer.")


# --------------------------------------------------------------------------- refusal-direction
def _load_refusal_direction() -> dict[str, Any]:
    from tunelab.inspect.refusal import RefusalConfig, run_refusal

    return dict(config_cls=RefusalConfig, run=_quiet(run_refusal), show=_show_refusal_direction,
                config="refusal.yaml; flags override it", skip=("probe_tokens", "steering_threshold", "depth", "min_prompts"))


def _show_refusal_direction(cfg: Any, result: RefusalDirectionResult) -> None:
    sel, scores, tok = result.selected, result.selected["scores"], result.refusal_tokens
    console.print(f"refusal tokens ({tok['source']}): {', '.join(map(repr, tok['tokens']))}; "
                  f"{tok['refused_harmful']}/{tok['n_harmful']} harmful selection prompts refused", highlight=False, markup=False)
    state = "passes the filters" if result.filters_passed else f"NO candidate passes the filters: {result.filter_reason}"
    console.print(f"selected: position {sel['position']} ({sel['token']!r}), layer {sel['layer']} of {result.n_layers} — "
                  f"ablated refusal score {scores['refusal_score']:+.3f} (baseline {result.baseline['harmful_refusal_score']:+.3f}), "
                  f"steering score {scores['steering_score']:+.3f}, KL {scores['kl']:.4f}; {state} "
                  f"({result.n_passed} of {len(result.candidates)} candidates pass)", highlight=False, markup=False)

    def pct(v: object) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{100 * v:5.1f}%"

    if result.rows:
        judge = result.rows[0].get("judge") or "keyword"
        console.print(f"{'intervention':15s} {'ASR':>7s} {'degen.':>7s} {'refusal':>8s} {'over-ref':>8s} {'CE':>7s}  "
                      f"(judge {judge})", highlight=False, markup=False)
        for r in result.rows:
            ce = "–" if r["ce"] is None else f"{r['ce']:.3f}"
            console.print(f"{r['intervention']:15s} {pct(r['asr']):>7s} {pct(r.get('degenerate_rate')):>7s} "
                          f"{pct(r['refusal_rate']):>8s} {pct(r['over_refusal']):>8s} {ce:>7s}", highlight=False)
    t = result.timing
    console.print(f"selection {t['selection_s']:.0f} s ({t['per_candidate_s']:.1f} s per candidate), measurements "
                  f"{t['measurement_s']:.0f} s, total {result.wall_time_s:.0f} s", highlight=False)
    out = result.output_dir
    files = result.files
    written = [f"{out}/metrics.json", f"{out}/{files['direction']}", f"{out}/{files['raw']}", f"{out}/{files['plot']}"]
    if files["responses"]:
        written.append(f"{out}/{files['responses']}")
    if files["export"]:
        written.append(f"{files['export']} (orthogonalized model)")
    console.print("wrote " + ", ".join(written), highlight=False, markup=False)


lazy_config_command(inspect_app, "refusal-direction", load=_load_refusal_direction,
                    help="The refusal direction (Arditi et al. 2024): select it, then measure ablation, addition and weight "
                         "orthogonalisation.")


# --------------------------------------------------------------------------- salt
def _load_salt() -> dict[str, Any]:
    from tunelab.inspect.salt import SaltConfig, run_salt

    def run(cfg: Any) -> SaltResult:
        quiet_libraries()
        return run_salt(cfg, progress=True)

    return dict(config_cls=SaltConfig, run=run, show=_show_salt, config="salt.yaml; flags override it",
                skip=("method", "holdout"))


def _show_salt(cfg: Any, r: SaltResult) -> None:
    def say(text: str) -> None:  # one line each, however narrow the terminal; no secrets in any of them
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    say(f"steering layers {', '.join(map(str, r.layers))} ({r.layer_source}); "
        f"{r.n_test} held-out records, baseline leak rate {r.baseline_leak:.1%}")
    say(f"{'coeff':>7}  {'positions':9}  {'leak rate [95% CI]':24}  {'accuracy [95% CI]':24}  leak reduction")
    for row in r.rows:
        red = "–" if row["leak_reduction"] is None else f"{row['leak_reduction']:+.0%}"
        leak = f"{row['leak_rate']:.1%} [{row['leak_ci'][0]:.1%}, {row['leak_ci'][1]:.1%}]"
        acc = f"{row['accuracy']:.1%} [{row['accuracy_ci'][0]:.1%}, {row['accuracy_ci'][1]:.1%}]"
        say(f"{row['coeff']:>7g}  {row['positions']:9}  {leak:24}  {acc:24}  {red}")
    say(f"wrote {r.output_dir}/metrics.json, salt_vector.safetensors, salt.png and answers.jsonl ({r.wall_time_s:.0f} s)")


lazy_config_command(inspect_app, "salt", load=_load_salt,
                    help="SALT privacy steering: leak rate and task accuracy vs steering coefficient on synthetic private records.")
