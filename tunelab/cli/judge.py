"""`tunelab judge train` and `tunelab judge compare`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.cli.app import judge_app
from tunelab.cli.common import console
from tunelab.cli.lazy import lazy_config_command

if TYPE_CHECKING:
    from tunelab.evaluate.judge_results import JudgeCompareResult, JudgeTrainResult


def _load_train() -> dict:
    """Imported only when `tunelab judge train` runs (torch, transformers, scikit-learn)."""
    from tunelab.cli.common import quiet_libraries
    from tunelab.safety.judge_jobs import JudgeTrainConfig, run_judge_train

    quiet_libraries()
    return dict(config_cls=JudgeTrainConfig, run=run_judge_train, show=_show_train)


def _load_compare() -> dict:
    """Imported only when `tunelab judge compare` runs."""
    from tunelab.cli.common import quiet_libraries
    from tunelab.safety.judge_jobs import JudgeCompareConfig, run_judge_compare

    quiet_libraries()
    return dict(config_cls=JudgeCompareConfig, run=run_judge_compare, show=_show_compare)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "–" if v is None else f"{v:{spec}}"


def _show_train(cfg: object, r: JudgeTrainResult) -> None:
    from rich.table import Table

    table = Table(title=f"embedding judge → {r.judge_dir}")
    for col in ("set", "n", "embedding acc.", "keyword acc."):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name, a in r.accuracy.items():
        table.add_row(name, str(a["n"]), _fmt(a["embedding"]), _fmt(a["keyword"]))
    console.print(table)
    console.print(f"wrote {r.judge_dir}/head.safetensors, judge_card.json, README.md, metrics.json ({r.wall_time_s:.0f} s)",
                  highlight=False, markup=False)


def _show_compare(cfg: object, r: JudgeCompareResult) -> None:
    from rich.table import Table

    judges = Table(title=f"{r.n} answers from {r.source}" + (f" ({r.labelled} labelled)" if r.labelled else ""))
    for col in ("judge", "threshold", "refusal rate", "accuracy", "answers/s"):
        judges.add_column(col, justify="left" if col == "judge" else "right")
    for j in r.judges:
        judges.add_row(j["name"], _fmt(j["threshold"], "g"), _fmt(j["refusal_rate"]), _fmt(j["accuracy"]),
                       _fmt(j["answers_per_s"], ".0f"))
    console.print(judges)
    pairs = Table(title="agreement")
    for col in ("judges", "agreement", "Cohen's κ", "disagree"):
        pairs.add_column(col, justify="left" if col == "judges" else "right")
    for p in r.pairs:
        pairs.add_row(f"{p['a']} vs {p['b']}", _fmt(p["agreement"]), _fmt(p["kappa"]), str(p["disagree"]))
    console.print(pairs)
    if r.disagreements:
        shown = Table(title="disagreements (truncated)")
        for col in ("prompt", "response", *[j["name"] for j in r.judges]):
            shown.add_column(col, overflow="fold")
        for d in r.disagreements:
            shown.add_row(d["prompt"], d["response"], *[d["verdicts"].get(j["name"], "") for j in r.judges])
        console.print(shown)
    console.print(f"wrote {r.output_dir}/metrics.json, verdicts.jsonl", highlight=False, markup=False)


lazy_config_command(judge_app, "train", load=_load_train,
                    help="Train the embedding judge (logistic regression over all-MiniLM-L6-v2 embeddings) on tunelab's recipe data.")
lazy_config_command(judge_app, "compare", load=_load_compare,
                    help="Run several judges on the same answers: refusal rates, agreement, Cohen's κ, disagreements.")
