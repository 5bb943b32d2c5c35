"""The root typer app and its command groups; command modules register on them."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sparse, safe and private fine-tuning of language models.")
tasks_app = typer.Typer(no_args_is_help=True, help="Built-in tasks: list them, export their data.")
app.add_typer(tasks_app, name="tasks")
data_app = typer.Typer(no_args_is_help=True, help="Build training data sets (safety recipe).")
app.add_typer(data_app, name="data")
inspect_app = typer.Typer(no_args_is_help=True, help="Look inside adapters and models: interference, inactive heads, pruning, steering, the refusal direction, SALT.")
app.add_typer(inspect_app, name="inspect")
steer_app = typer.Typer(no_args_is_help=True, help="Steering vectors: train from contrast pairs; apply with `tunelab generate/eval --steer`.")
inspect_app.add_typer(steer_app, name="steer")
audit_app = typer.Typer(no_args_is_help=True, help="Audit what alignment and fine-tuning did: safety depth, refusal calibration, privacy, multi-turn stability.")
app.add_typer(audit_app, name="audit")
attack_app = typer.Typer(no_args_is_help=True, help="Attack a safety adapter: fine-tuning attacks, ASR before → after.")
app.add_typer(attack_app, name="attack")
scaling_app = typer.Typer(no_args_is_help=True, help="Scaling laws: fit L = E + A/N^α + B/D^β (and approach 1's hull) to a table of runs.")
app.add_typer(scaling_app, name="scaling")
judge_app = typer.Typer(no_args_is_help=True, help="Refusal judges: train the embedding judge, compare judges on the same answers.")
app.add_typer(judge_app, name="judge")
