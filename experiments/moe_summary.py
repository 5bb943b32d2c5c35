"""Tables, figures and the scaling fits of experiments/moe_pretraining.py, from its run dirs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _finish import finish
from rich.console import Console

A_NAMES = {"topk": "top-k", "default": "Default MoE (forward)", "default-st": "Default MoE (straight-through)"}
B_ARCHS = {"topk": "MoE top-k + aux + z", "sinkhorn": "MoE Sinkhorn", "dense": "dense, FLOP-matched"}
B_RECIPES = {"constant": "constant LR 1e-4, no replay", "rewarm": "re-warm + re-decay, no replay",
             "rewarm-replay": "re-warm + re-decay + 5% replay"}


def _load(d: Path) -> dict[str, Any] | None:
    f = d / "metrics.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _evals(d: Path) -> list[dict[str, Any]]:
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in rows if r["split"] == "eval"]


def _ms(xs: list[float], digits: int = 3) -> str:
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _router_table(root: Path, sub: str, names: dict[str, str], seeds: list[int]) -> tuple[dict[str, Any], str]:
    """Held-out loss, the paired difference to top-k, router-gradient cosine and MRI per router
    variant of ``root/sub/<variant>-s<seed>``: (summary, markdown rows with a header)."""
    got = {v: {s: m for s in seeds if (m := _load(root / sub / f"{v}-s{s}"))} for v in names}
    ref = {s: m["final_loss"]["kjv"] for s, m in got["topk"].items()}
    table, summary = [], {}
    for v, name in names.items():
        have = got[v]
        loss = [m["final_loss"]["kjv"] for m in have.values()]
        diffs = [have[s]["final_loss"]["kjv"] - ref[s] for s in have if s in ref]
        cos_end = [_mean(m["router_grad_cosine"]) for m in have.values()]
        cos_all = [_mean([_mean(r["router_grad_cosine"]) for r in _evals(root / sub / f"{v}-s{s}")
                          if r.get("router_grad_cosine")]) for s in have]
        mri = [_mean(m["routing"]["kjv"]["eval"]["mri"]) for m in have.values()]
        summary[v] = {"loss": loss, "diff_vs_topk": diffs, "cos_end": cos_end, "cos_mean": cos_all, "mri": mri}
        wins = f"{sum(d < 0 for d in diffs)}/{len(diffs)}" if v != "topk" else "–"
        table.append(f"| {name} | {_ms(loss, 4)} | {_ms(diffs, 4) if v != 'topk' else '–'} | {wins} | "
                     f"{_ms(cos_all)} | {_ms(cos_end)} | {_ms(mri, 2)} |")
    return summary, ("| router | held-out loss | Δ vs top-k (paired) | seeds better | router-grad cosine (mean over "
                     "training) | cosine at the end | MRI (eval) |\n|---|---|---|---|---|---|---|\n"
                     + "\n".join(table) + "\n")


def part_a(root: Path, seeds: list[int]) -> tuple[dict[str, Any], str, list[Path]]:
    summary, rows = _router_table(root, "a", A_NAMES, seeds)
    md = "### (a) Default MoE vs top-k (kjv, 3 paired seeds, 1,000 steps)\n\n" + rows
    runs = {v: {s: root / "a" / f"{v}-s{s}" for s in seeds} for v in A_NAMES}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, v in enumerate(A_NAMES):
        curves = [_evals(runs[v][s]) for s in seeds if (runs[v][s] / "metrics.json").is_file()]
        if not curves:
            continue
        steps = [r["step"] for r in curves[0]]
        axes[0].plot(steps[1:], [_mean([c[j]["loss"]["kjv"] for c in curves]) for j in range(1, len(steps))],
                     marker="o", ms=3, label=A_NAMES[v])
        axes[1].plot(steps[1:], [_mean([_mean(c[j]["router_grad_cosine"]) for c in curves]) for j in range(1, len(steps))],
                     marker="o", ms=3, label=A_NAMES[v])
    axes[0].set(xlabel="step", ylabel="held-out loss (kjv), mean of seeds", ylim=None)
    axes[1].set(xlabel="step", ylabel="router-gradient cosine to dense")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = root / "default_moe.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return summary, md, [path]


def part_a2(root: Path, seeds: list[int]) -> tuple[dict[str, Any], str, list[Path]]:
    """Top-k vs Default MoE (forward) with renormalised gates and z-loss, 16 × 256 (the README's commands)."""
    summary, rows = _router_table(root, "a2", {"topk": "top-k", "default": "Default MoE (forward)"}, seeds)
    return summary, ("### (a′) Default MoE vs top-k with renormalised gates and z-loss (kjv, 16 × 256, 1,000 steps)\n\n"
                     + rows), []


def part_b(root: Path, seeds: list[int]) -> tuple[dict[str, Any], str, list[Path]]:
    summary: dict[str, Any] = {}
    lines = []
    for arch, aname in B_ARCHS.items():
        # the base model on the CPT runs' held-out windows: their step-0 evaluation (same for every recipe)
        first = {s: _load(root / "b" / f"{arch}-s{s}-constant") for s in seeds}
        start = {s: m["initial_loss"] for s, m in first.items() if m}
        mri0 = {src: [_mean(m["evals"][0]["mri"][src]) for m in first.values() if m and m["evals"][0].get("mri")]
                for src in ("kjv", "pydoc")}
        lines.append(f"| {aname} | base (before CPT) | {_ms([v['kjv'] for v in start.values()], 4)} | – | "
                     f"{_ms([v['pydoc'] for v in start.values()], 4)} | "
                     + (f"{_ms(mri0['kjv'], 2)} / {_ms(mri0['pydoc'], 2)} | – |" if mri0["kjv"] else "– | – |"))
        for recipe, rname in B_RECIPES.items():
            got = {s: _load(root / "b" / f"{arch}-s{s}-{recipe}") for s in seeds}
            got = {s: m for s, m in got.items() if m}
            if not got:
                continue
            new = [m["final_loss"]["pydoc"] for m in got.values()]
            old = [m["final_loss"]["kjv"] for m in got.values()]
            forget = [m["final_loss"]["kjv"] - m["initial_loss"]["kjv"] for m in got.values()]
            mri = {src: [_mean(m["routing"][src]["eval"]["mri"]) for m in got.values()] for src in ("kjv", "pydoc")} \
                if arch != "dense" else None
            changed = [_mean(m["expert_changes"]["kjv"]["top1"]) for m in got.values()] if arch != "dense" else None
            summary[f"{arch}/{recipe}"] = {"new": new, "old": old, "forgetting": forget, "mri": mri, "changed_top1": changed}
            lines.append(f"| {aname} | {rname} | {_ms(old, 4)} | {_ms(forget, 4)} | {_ms(new, 4)} | "
                         + (f"{_ms(mri['kjv'], 2)} / {_ms(mri['pydoc'], 2)} | {_ms([100 * c for c in changed], 1)}% |"
                            if mri else "– | – |"))
    md = ("### (b) Continual pre-training kjv → pydoc (3 paired seeds; 1,000 + 1,000 steps)\n\n"
          "| model | phase / recipe | loss on kjv (old) | forgetting (Δ old vs base) | loss on pydoc (new) | "
          "MRI old / new | tokens changing top-1 expert (old text) |\n|---|---|---|---|---|---|---|\n"
          + "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, arch in enumerate(B_ARCHS):
        for j, recipe in enumerate(B_RECIPES):
            curves = [_evals(root / "b" / f"{arch}-s{s}-{recipe}") for s in seeds
                      if (root / "b" / f"{arch}-s{s}-{recipe}" / "metrics.json").is_file()]
            if not curves:
                continue
            steps = [r["step"] for r in curves[0]]
            style = dict(color=f"C{i}", ls=["-", "--", ":"][j], lw=1.2)
            label = f"{arch}, {recipe}"
            axes[0].plot(steps, [_mean([c[k]["loss"]["kjv"] for c in curves]) for k in range(len(steps))], label=label, **style)
            axes[1].plot(steps, [_mean([c[k]["loss"]["pydoc"] for c in curves]) for k in range(len(steps))], label=label, **style)
    axes[0].set(xlabel="CPT step", ylabel="held-out loss on kjv (old)")
    axes[1].set(xlabel="CPT step", ylabel="held-out loss on pydoc (new)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=1)
    fig.tight_layout()
    path = root / "continual.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return summary, md, [path]


def part_c(root: Path) -> tuple[dict[str, Any], str, list[Path]]:
    from tunelab.scaling import ScalingFitConfig, run_scaling_fit

    rows = []
    for d in sorted((root / "c").glob("w*-d*")):
        m = _load(d)
        if not m:
            continue
        for r in _evals(d):
            if r["step"] > 0:
                rows.append({"run": d.name, "width": m["shape"]["width"], "depth": m["shape"]["depth"],
                             "params": m["params"], "tokens": r["tokens"], "loss": r["loss"]["kjv"]})
    table = root / "c" / "table.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shape = dict(head_dim=32, queries_per_kv_head=1, ffn_mult=4.0, seq_len=128, vocab_size=259)
    nd = run_scaling_fit(ScalingFitConfig(table=str(table), params_column="params", tokens_column="tokens",
                                          loss_column="loss", width_column="width", depth_column="depth", **shape,
                                          delta=1e-3, bootstrap=100, workers=2, output=str(root / "c" / "fit-nd")))
    wdd = run_scaling_fit(ScalingFitConfig(table=str(table), size_columns=["width", "depth", "tokens"], loss_column="loss",
                                           params_column="params", tokens_column="tokens", width_column="width",
                                           depth_column="depth", **shape, delta=1e-3, bootstrap=50, max_starts=2000,
                                           workers=2, output=str(root / "c" / "fit-wdd")))
    law = nd.law
    ci = nd.ci or {}
    opt = (nd.optimal or {}).get("counted") or (nd.optimal or {}).get("6ND") or {}
    a1 = nd.approach1 or {}
    md = ("### (c) Mini-Gemstones: dense 32/64/128 wide × 2/4/6 deep, kjv, constant LR, 10 token counts each\n\n"
          f"{len(rows)} rows. Approach 3, (N, D), δ = 1e-3: L = {law['E']:.3f} + {law['A']:.4g}/N^{law['alpha']:.3f} "
          f"+ {law['B']:.4g}/D^{law['beta']:.3f}; R² (log) {nd.r2_log:.3f}; degenerate: {nd.degenerate} "
          f"{'(' + '; '.join(nd.reasons) + ')' if nd.reasons else ''}.\n\n"
          "| parameter | fit | bootstrap 95% CI |\n|---|---|---|\n"
          + "\n".join(f"| {k} | {law[k]:.4g} | {_ci(ci.get(k))} |" for k in ("E", "A", "B", "alpha", "beta")) + "\n\n"
          + (f"Compute-optimal at the sweep's largest budget ({nd.budget:.3g} FLOPs): N* = {opt.get('N', float('nan')):.3g}, "
             f"D* = {opt.get('D', float('nan')):.3g} ({opt.get('tokens_per_param', float('nan')):.3g} tokens/parameter).\n\n"
             if opt else "")
          + "(width, depth, D) law: " + " + ".join([f"{wdd.law['E']:.3f}"] + [
              f"{t['A']:.3g}/{t['column']}^{t['alpha']:.3f}" for t in wdd.law["terms"]])
          + f"; R² (log) {wdd.r2_log:.3f}; degenerate: {wdd.degenerate}.\n\n"
          + f"Approach 1: {a1.get('n_hull', 0)} hull points; "
          + ", ".join(f"{n} ∝ C^{(a1.get(n + '_fit') or {}).get('exponent', float('nan')):.3f}" for n in ("params", "tokens")
                      if a1.get(n + "_fit")) + (f" ({a1['note']})" if a1.get("note") else "") + ".\n")
    figs = [root / "c" / "fit-nd" / f for f in nd.figures]
    return {"nd": {k: getattr(nd, k) for k in ("law", "ci", "r2_log", "degenerate", "reasons", "optimal", "approach1")},
            "wdd": {k: getattr(wdd, k) for k in ("law", "r2_log", "degenerate", "reasons")}, "rows": len(rows)}, md, figs


def _ci(pair: Any) -> str:
    if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair):
        return f"[{pair[0]:.4g}, {pair[1]:.4g}]"
    return "–"


def summarize(root: Path, parts: str, seeds: list[int], started: float, console: Console) -> int:
    summary: dict[str, Any] = {}
    md, figures = "", []
    for part, fn in (("a", lambda: part_a(root, seeds)), ("a2", lambda: part_a2(root, seeds)), ("b", lambda: part_b(root, seeds)), ("c", lambda: part_c(root))):
        if part in parts.split(","):
            s, m, f = fn()
            summary[part], md, figures = s, md + m + "\n", figures + f
    return finish(root, summary, md, figures, "tunelab: MoE pre-training experiments", started, console)
