"""``tunelab pretrain``: pre-train (or continue pre-training) a dense or MoE model on raw text.

The loop is nanoGPT-sized: sample windows, forward, next-token loss + the routers' balancing
terms, AdamW, schedule; evaluate, checkpoint, log. What is particular to pre-training here:

* the model comes from a size spec (:mod:`tunelab.moe.model`) or ``--init-from`` a saved one;
* batches are drawn from a generator seeded by (seed, step), so a resumed run sees the very
  batches the uninterrupted run would have (checkpoints keep weights, EMA buffers, AdamW);
* continual pre-training: ``--replay OLD:F`` swaps each row of a batch for an OLD window with
  probability F (F = 0: OLD is only evaluated), and the held-out loss and MRI are logged on both
  distributions; ``--schedule rewarm`` warms the LR up again and re-decays it;
* ``metrics.jsonl`` has a row per logged step (loss, aux, z, LR, tokens/s, MRI per layer) and
  per evaluation (held-out loss, MRI under evaluation and training routing, load, router-gradient
  cosine); ``metrics.json`` (kind ``pretrain``) sums the run up for the report.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tunelab.errors import TunelabError
from tunelab.options import check_fields, option
from tunelab.layout import EVAL_FILE, METRICS_FILE
from tunelab.moe.results import PretrainResult
from tunelab.results import RunDir
from tunelab.moe import ddp
from tunelab.moe.balancing import max_routing_imbalance, switch_aux_loss, z_loss
from tunelab.moe.corpora import CORPORA, TokenStream, load_tokenizer, read_stream
from tunelab.moe.default_moe import DefaultMoeBlock
from tunelab.moe.diagnostics import (
    expert_changes,
    lm_loss,
    router_gradient_cosine,
    routing_stats,
)
from tunelab.moe.model import (
    ModelSpec,
    build_model,
    load_pretrained,
    moe_blocks,
    save_model,
    spec_of,
    trained_router,
)
from tunelab.moe.routers import ROUTERS
from tunelab.train.checkpoint import (
    CHECKPOINT_DIR,
    find_checkpoint,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from tunelab.train.run_dir import MetricsLog

SCHEDULES = ("cosine", "constant", "rewarm")


@dataclass
class PretrainConfig:
    """Everything ``tunelab pretrain`` needs. Size fields left ``None`` come from ``--init-from``
    (which must then agree with any that are given) or from :class:`ModelSpec`'s defaults."""

    arch: str | None = option(None, show_default="moe", help="dense (Llama-style) or moe (Mixtral-style)")
    router: str | None = option(None, show_default="topk",
                                help="topk (Switch aux + z-loss), sinkhorn, or default (Default MoE)")
    width: int | None = option(None, show_default="64", help="hidden size")
    depth: int | None = option(None, show_default="4", help="layers")
    heads: int | None = option(None, show_default="width / 32", help="attention heads")
    kv_heads: int | None = option(None, show_default="heads", help="key/value heads")
    ffn: int | None = option(None, show_default="2 × width; dense: 2 × top-k × width, FLOP-matched",
                             help="expert (MoE) or MLP (dense) hidden width")
    experts: int | None = option(None, show_default="8", help="experts per MoE layer")
    top_k: int | None = option(None, show_default="2", help="experts per token")
    renormalize: bool | None = option(None, flag="--renormalize/--no-renormalize", show_default="yes",
                                      help="top-k gates rescaled to sum to 1 (Mixtral)")
    default_beta: float = option(0.9, show_default="0.9", help="Default MoE: EMA decay β of the default outputs")
    default_mode: str = option("forward", show_default="forward", help="Default MoE: forward or straight-through")
    # None: 1e-2 / 1e-3 (topk, default), 0 (sinkhorn); NaN and inf are refused in validate()
    aux_loss_coef: float | None = option(None, min=0, show_default="0.01; sinkhorn 0", help="Switch aux loss per layer")
    z_loss_coef: float | None = option(None, min=0, show_default="0.001; sinkhorn 0", help="router z-loss per layer")
    data: str | None = option(None, help="a text file (or JSONL with a 'text' field)")
    corpus: str | None = option(None, help="a built-in offline corpus: pydoc or kjv")
    tokenizer: str = option("bytes", show_default="bytes", help="bytes, or a tokenizer dir / model alias")
    seq_len: int = option(256, min=1, show_default="256", help="tokens per window")
    batch_size: int = option(16, min=1, show_default="16", help="windows per step")
    max_steps: int = option(1000, min=1, show_default="1000", help="optimizer steps")
    lr: float = option(1e-3, gt=0, show_default="1e-3", help="peak learning rate")
    min_lr_ratio: float = option(0.1, min=0, max=1, show_default="0.1", help="cosine floor ÷ peak")
    warmup_steps: int | None = option(None, show_default="2% of the steps; constant: 0")  # in [0, max_steps]
    schedule: str = option("cosine", show_default="cosine",
                           help="cosine, constant, or rewarm (re-warm + re-decay a --init-from model)")
    weight_decay: float = option(0.1, min=0, show_default="0.1", help="AdamW weight decay on matrices")
    grad_clip: float = option(1.0, min=0, help="max gradient norm")  # no flag: YAML only
    held_out: float = option(0.05, gt=0, lt=0.5, show_default="0.05", help="fraction of each text held out (its end)")
    eval_every: int | None = option(None, min=1, show_default="steps / 10", help="steps between evaluations and checkpoints")
    eval_batches: int = option(8, min=1, show_default="8", help="held-out batches per evaluation")
    log_every: int = option(1, min=1, show_default="1", help="steps per train row in metrics.jsonl")
    init_from: str | None = option(None, help="continue pre-training this saved model")
    replay: str | None = option(None, help="OLD:FRACTION — mix in old data (a file or corpus:NAME); also evaluated on it")
    seed: int = option(0, show_default="0")
    bf16: bool = option(False, flag="--bf16/--no-bf16", show_default="off", help="bf16 autocast")
    output: str | None = option(None, show_default="runs/pretrain/NAME", help="output dir")
    resume: bool = option(False, flag="--resume", help="continue an interrupted run in --output")
    overwrite: bool = option(False, flag="--overwrite", help="replace a non-empty --output")

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without data or model."""
        if (self.data is None) == (self.corpus is None):
            raise TunelabError("give exactly one of --data FILE and --corpus NAME")
        if self.corpus is not None and self.corpus not in CORPORA:
            raise TunelabError(f"--corpus must be one of {', '.join(CORPORA)}, got '{self.corpus}'")
        if self.schedule not in SCHEDULES:
            raise TunelabError(f"--schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.schedule == "rewarm" and not self.init_from:
            raise TunelabError("--schedule rewarm re-warms a trained model: give --init-from CKPT")
        check_fields(self)  # one-field bounds from the fields' metadata
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.max_steps:
            raise TunelabError(f"--warmup-steps must be in [0, --max-steps], got {self.warmup_steps}")
        # the bounds pass inf (and >= 0 passes NaN): refused here with the bound's own message
        if not math.isfinite(self.lr):
            raise TunelabError(f"--lr must be > 0, got {self.lr:g}")
        for name in ("aux_loss_coef", "z_loss_coef", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise TunelabError(f"--{name.replace('_', '-')} must be >= 0, got {value:g}")
        if self.replay is not None:
            self.replay_source()
        if self.init_from and not Path(self.init_from).is_dir():
            raise TunelabError(f"--init-from {self.init_from}: no such model directory")
        if not self.init_from:
            self.spec(None).resolved()

    def replay_source(self) -> tuple[str, float]:
        """(OLD source, fraction) of ``--replay OLD:FRACTION``."""
        source, sep, frac = (self.replay or "").rpartition(":")
        try:
            fraction = float(frac)
        except ValueError:
            fraction = -1.0
        if not sep or not source or not 0 <= fraction < 1:
            raise TunelabError(f"--replay must be OLD:FRACTION with 0 <= FRACTION < 1 (e.g. corpus:pydoc:0.05), "
                               f"got '{self.replay}'")
        return source, fraction

    def source(self) -> str:
        return self.data if self.data is not None else f"corpus:{self.corpus}"

    def spec(self, vocab_size: int | None) -> ModelSpec:
        """The size spec from the flags (defaults where unset)."""
        given = {f.name: getattr(self, f.name) for f in fields(ModelSpec) if hasattr(self, f.name)}
        given = {k: v for k, v in given.items() if v is not None}
        given["seq_len"] = self.seq_len
        if vocab_size is not None:
            given["vocab_size"] = vocab_size
        return ModelSpec(**given)

    def output_dir(self) -> Path:
        """``--output``, else ``runs/pretrain/ARCH[-ROUTER]-DATA[-cpt]``."""
        if self.output:
            return Path(self.output)
        name = self.arch or "moe"
        if name == "moe" and not self.init_from:
            name += f"-{self.router or 'topk'}"
        data = Path(self.data).stem if self.data else self.corpus
        return Path(f"runs/pretrain/{name}-{data}" + ("-cpt" if self.init_from else ""))

    def run_dir(self) -> RunDir:
        """The job's default :class:`~tunelab.results.RunDir`: ``metrics.json`` marks a finished run, and any
        non-empty directory is refused without ``--overwrite`` or ``--resume``."""
        return RunDir(self.output_dir(), marker=EVAL_FILE, what="a finished run",
                      not_empty="{path} is not empty: pass --overwrite, --resume, or another --output")

    def coefficients(self, router: str) -> tuple[float, float]:
        """The aux and z-loss coefficients: as given, else 0 for a router that balances itself."""
        balanced = router in ROUTERS and ROUTERS.get(router).balances_itself
        aux = self.aux_loss_coef if self.aux_loss_coef is not None else (0.0 if balanced else 1e-2)
        z = self.z_loss_coef if self.z_loss_coef is not None else (0.0 if balanced else 1e-3)
        return aux, z


SIZE_FLAGS = ("arch", "width", "depth", "heads", "kv_heads", "ffn", "experts", "top_k")


def check_init_from(cfg: PretrainConfig, model: torch.nn.Module) -> None:
    """``--init-from``'s architecture must match every size flag the user gave."""
    have = spec_of(model)
    for name in SIZE_FLAGS:
        want = getattr(cfg, name)
        if want is not None and have.get(name) != want:
            raise TunelabError(f"--init-from {cfg.init_from} has {name.replace('_', '-')} {have.get(name)}, "
                               f"but this run asks for --{name.replace('_', '-')} {want}")
    trained = trained_router(model)
    if cfg.router is not None and trained is not None and trained != cfg.router:
        raise TunelabError(f"--init-from {cfg.init_from} was trained with --router {trained}, "
                           f"but this run asks for --router {cfg.router}")


def _schedule(cfg: PretrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    from transformers import get_scheduler

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else \
        (0 if cfg.schedule == "constant" else max(1, cfg.max_steps // 50))
    if cfg.schedule == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup)
    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup, num_training_steps=cfg.max_steps,
                         scheduler_specific_kwargs={"min_lr_rate": cfg.min_lr_ratio})


def _optimizer(cfg: PretrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def _batch(cfg: PretrainConfig, new: TokenStream, old: TokenStream | None, fraction: float, step: int,
           rank: int = 0) -> torch.Tensor:
    """Step ``step``'s batch on ``rank``: a pure function of (seed, step, rank), so resuming replays it exactly."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + rank * 1_000_000_007_000)
    batch = new.batch(cfg.batch_size, g)
    if old is not None and fraction > 0:
        swap = torch.rand(cfg.batch_size, generator=g) < fraction
        if swap.any():
            batch[swap] = old.batch(int(swap.sum()), g)
    return batch


def _balancing(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Summed aux and z-loss over MoE layers of the last forward, and each layer's MRI."""
    blocks = moe_blocks(model)
    zero = torch.zeros(())
    aux = sum((switch_aux_loss(b.last_logits, b.last_indices) for b in blocks), zero)
    z = sum((z_loss(b.last_logits) for b in blocks), zero)
    return aux, z, [max_routing_imbalance(b.last_indices, b.num_experts) for b in blocks]


def _load_init(cfg: PretrainConfig, vocab: int) -> Any:
    """The ``--init-from`` model (continual pre-training), checked against the run; None without one."""
    if not cfg.init_from:
        return None
    init = load_pretrained(cfg.init_from)
    check_init_from(cfg, init)
    if init.config.vocab_size < vocab:
        raise TunelabError(f"--init-from {cfg.init_from} has a {init.config.vocab_size}-token vocabulary; "
                           f"--tokenizer {cfg.tokenizer} needs {vocab}")
    return init


def _starting_model(cfg: PretrainConfig, init: Any, tokenizer: Any) -> tuple[Any, str, str | None]:
    """(model, arch, router): the ``--init-from`` model or a fresh one from the size spec."""
    if init is not None:
        model = init
        arch, router = spec_of(model)["arch"], trained_router(model)
    else:
        spec = cfg.spec(len(tokenizer)).resolved()
        model, arch, router = build_model(spec, cfg.seed), spec.arch, spec.router if spec.arch == "moe" else None
    # the tokenizer's specials, so generate() stops and pads where the tokenizer does
    model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, arch, router


def _eval_sets(cfg: PretrainConfig, new: Any, old: Any) -> dict[str, list[torch.Tensor]]:
    """Held-out batches of the new corpus and, with ``--replay``, of the old one."""
    eval_sets = {new.name: new.eval_batches(cfg.batch_size, cfg.eval_batches)}
    if old is not None:
        eval_sets.setdefault(old.name, old.eval_batches(cfg.batch_size, cfg.eval_batches))
    return eval_sets


def _train_step(cfg: PretrainConfig, net: torch.nn.Module, model: torch.nn.Module, batch: torch.Tensor, autocast: Any,
                optimizer: Any, scheduler: Any, coefficients: tuple[float, float],
                ranks: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[float], float]:
    """One optimizer step on ``batch``: CE + aux + z-loss; returns (ce, aux, z, MRI per layer, grad norm)."""
    aux_coef, z_coef = coefficients
    with autocast:
        logits = net(input_ids=batch[:, :-1]).logits
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    aux, z, mri = _balancing(model)
    loss = ce + aux_coef * aux + z_coef * z
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    ddp.sync_defaults(model, ranks)
    return ce, aux, z, mri, grad_norm


def run_pretrain(cfg: PretrainConfig, run_dir: RunDir | None = None, *, console: Console | None = None,
                 stop_after_step: int | None = None) -> PretrainResult | None:
    """The ``tunelab pretrain`` job: ``run_pretrain(cfg, run_dir=None, *, console=None, stop_after_step=None)``.

    Trains into ``run_dir`` (``None``: ``cfg.run_dir()``; a directory of its own shape, refused
    when not empty unless ``cfg.overwrite`` or ``cfg.resume``) and returns the
    :class:`~tunelab.moe.results.PretrainResult` it wrote last. ``None`` where nothing was written:
    on ranks other than 0 under ``torchrun``, and when ``stop_after_step`` ends the run after that
    step's checkpoint, as if killed there (to test ``--resume``).
    """
    console = console or Console(stderr=True)
    ranks = ddp.setup()
    run_dir = cfg.run_dir() if run_dir is None else run_dir
    out = run_dir.path
    resume_from = run_dir.check(overwrite=cfg.overwrite, resume=cfg.resume, checkpoint=find_checkpoint)
    ddp.barrier(ranks)  # every rank has looked at the output dir before rank 0 creates it
    if resume_from is not None:
        cfg = _resumed_config(cfg, out)
    tokenizer = load_tokenizer(cfg.tokenizer)
    vocab = len(tokenizer)
    init = _load_init(cfg, vocab)
    new = read_stream(cfg.source(), tokenizer, cfg.seq_len, cfg.held_out)
    old, fraction = None, 0.0
    if cfg.replay:
        source, fraction = cfg.replay_source()
        old = read_stream(source, tokenizer, cfg.seq_len, cfg.held_out)
    model, arch, router = _starting_model(cfg, init, tokenizer)
    aux_coef, z_coef = cfg.coefficients(router or "topk")
    if arch == "dense":
        aux_coef = z_coef = 0.0
    model.to(ranks.device)
    optimizer = _optimizer(cfg, model)
    scheduler = _schedule(cfg, optimizer)
    start_step, train_seconds, tokens = 0, 0.0, 0
    if resume_from is not None:
        start_step, train_seconds, tokens = _load_state(resume_from, model, optimizer, scheduler)
        console.print(f"resuming {out} from step {start_step}/{cfg.max_steps}")
    elif ranks.main:
        _open_output(cfg, run_dir)
    ddp.barrier(ranks)
    net = ddp.wrap(model, ranks)
    eval_sets = _eval_sets(cfg, new, old)
    eval_every = cfg.eval_every or max(1, cfg.max_steps // 10)
    # rows of other shapes than fine-tuning's, and no TensorBoard scalars
    log = MetricsLog(out, start_step if resume_from is not None else None, ranks.main, tensorboard=False)
    autocast = torch.autocast(ranks.device.type, dtype=torch.bfloat16) if cfg.bf16 else nullcontext()
    window = {"ce": 0.0, "aux": 0.0, "z": 0.0, "n": 0, "tokens": 0, "t": 0.0, "mri": None}
    if resume_from is None and ranks.main:  # step 0: the starting point of every curve
        log.write_row(_evaluate(model, eval_sets, 0, tokens, autocast))
    net.train()
    started = time.perf_counter()
    step = start_step
    try:
        with _bar(console, arch, router, ranks.main) as bar:
            task = bar.add_task("pretrain", total=cfg.max_steps, completed=step, loss="", tps=0.0)
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                batch = _batch(cfg, new, old, fraction, step, ranks.rank).to(ranks.device)
                ce, aux, z, mri, grad_norm = _train_step(cfg, net, model, batch, autocast, optimizer, scheduler,
                                                         (aux_coef, z_coef), ranks)
                step += 1
                dt = time.perf_counter() - t0
                train_seconds += dt
                tokens += batch[:, 1:].numel() * ranks.world
                window["ce"] += float(ce.detach()); window["aux"] += float(aux.detach()); window["z"] += float(z.detach())
                window["n"] += 1; window["tokens"] += batch[:, 1:].numel() * ranks.world; window["t"] += dt
                window["mri"] = mri
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    log.write_row(_train_row(step, window, scheduler, grad_norm, tokens, train_seconds))
                    bar.update(task, loss=f"loss {window['ce'] / window['n']:.3f}", tps=window["tokens"] / window["t"])
                    window = {k: 0 if k != "mri" else None for k in window}
                    window["t"] = 0.0
                bar.update(task, completed=step)
                stop = stop_after_step is not None and step >= stop_after_step
                if step % eval_every == 0 or step == cfg.max_steps or stop:
                    if ranks.main and (step % eval_every == 0 or step == cfg.max_steps):
                        row = _evaluate(model, eval_sets, step, tokens, autocast)
                        if arch == "moe":
                            row["router_grad_cosine"] = router_gradient_cosine(model, eval_sets[new.name][0])
                        log.write_row(row)
                    if ranks.main and (step < cfg.max_steps or stop):
                        _save_state(out, model, optimizer, scheduler, step, train_seconds, tokens)
                    ddp.barrier(ranks)
                    net.train()
                if stop:
                    return None
    except KeyboardInterrupt:
        console.print(f"interrupted at step {step}; continue from the last evaluation with: "
                      f"tunelab pretrain --output {out} --resume")
        raise
    finally:
        log.close()
    result = None
    if ranks.main:
        result = _finish(cfg, run_dir, model, tokenizer, init, eval_sets, arch, router, (aux_coef, z_coef), tokens,
                         train_seconds, time.perf_counter() - started, console)
    ddp.barrier(ranks)
    ddp.teardown(ranks)
    return result


def _evaluate(model: torch.nn.Module, eval_sets: dict[str, list[torch.Tensor]], step: int, tokens: int,
              autocast: Any) -> dict[str, Any]:
    """Held-out loss per distribution, and MRI under evaluation and training routing."""
    row: dict[str, Any] = {"step": step, "split": "eval", "tokens": tokens, "loss": {}, "mri": {}, "mri_train": {}}
    model.eval()
    with torch.no_grad(), autocast:
        for name, batches in eval_sets.items():
            row["loss"][name] = sum(float(lm_loss(model, b)) for b in batches) / len(batches)
    if moe_blocks(model):
        for name, batches in eval_sets.items():
            row["mri"][name] = routing_stats(model, batches)["mri"]
            row["mri_train"][name] = routing_stats(model, batches, training_routing=True)["mri"]
    return row


def _train_row(step: int, w: dict[str, Any], scheduler: Any, grad_norm: float, tokens: int, seconds: float) -> dict:
    n = max(1, w["n"])
    return {"step": step, "split": "train", "loss": w["ce"] / n, "aux_loss": w["aux"] / n, "z_loss": w["z"] / n,
            "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens": tokens,
            "tokens_per_s": w["tokens"] / max(w["t"], 1e-9), "mri": w["mri"] or [], "elapsed_s": round(seconds, 3)}


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The rows of a pretrain run's ``metrics.jsonl``."""
    path = out / METRICS_FILE
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.is_file() else []


def _resumed_config(cfg: PretrainConfig, out: Path) -> PretrainConfig:
    """The saved run's config (the flags of a resumed run are only --output and --resume)."""
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    known = {f.name for f in fields(PretrainConfig)}
    return PretrainConfig(**{**{k: v for k, v in saved.items() if k in known}, "resume": True, "output": str(out)})


def _open_output(cfg: PretrainConfig, run_dir: RunDir) -> None:
    import yaml

    run_dir.open(clear=cfg.overwrite)
    run_dir.write_text("config.yaml", yaml.safe_dump({**asdict(cfg), "output": str(run_dir.path), "resume": False,
                                                       "overwrite": False}, sort_keys=False))


def _save_state(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, step: int,
                seconds: float, tokens: int) -> None:
    """Replace ``out/checkpoint`` (atomically, as fine-tuning does): all weights + Default MoE's EMA
    buffers, AdamW and the schedule, progress."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for i, b in enumerate(moe_blocks(model)):
        if isinstance(b, DefaultMoeBlock):
            state[f"moe_defaults.{i}"] = b.defaults.contiguous()
    # tied weights appear twice in state_dict: keep one copy
    seen, unique = set(), {}
    for k, v in state.items():
        if v.data_ptr() in seen and v.numel():
            continue
        seen.add(v.data_ptr())
        unique[k] = v.clone()
    tensors, meta = optimizer_to_flat(optimizer.state_dict())
    save_checkpoint(out, unique, (tensors, {**meta, "scheduler": scheduler.state_dict()}),
                    {"step": step, "train_seconds": seconds, "tokens": tokens})


def _load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
                ) -> tuple[int, float, int]:
    weights, (tensors, meta), progress = load_checkpoint(path)
    defaults = {k: weights.pop(k) for k in list(weights) if k.startswith("moe_defaults.")}
    model.load_state_dict(weights, strict=False)
    for i, b in enumerate(moe_blocks(model)):
        if f"moe_defaults.{i}" in defaults:
            b.defaults = defaults[f"moe_defaults.{i}"]
    optimizer.load_state_dict(optimizer_from_flat(tensors, meta))
    scheduler.load_state_dict(meta["scheduler"])
    return progress["step"], progress["train_seconds"], progress["tokens"]


def _finish(cfg: PretrainConfig, run_dir: RunDir, model: torch.nn.Module, tokenizer: Any, init: Any,
            eval_sets: dict[str, list[torch.Tensor]], arch: str, router: str | None, coefs: tuple[float, float],
            tokens: int, seconds: float, wall: float, console: Console) -> PretrainResult:
    """Save the model (loads with AutoModelForCausalLM), routing statistics, figures, metrics.json last."""
    out = run_dir.path
    save_model(model, out)
    tokenizer.save_pretrained(out)
    rows = read_metrics(out)
    evals = [r for r in rows if r["split"] == "eval"]
    summary: dict[str, Any] = {
        "kind": "pretrain", "name": "pretrain", "arch": arch, "router": router, "shape": spec_of(model),
        "params": sum(p.numel() for p in model.parameters()),
        "data": cfg.source(), "init_from": cfg.init_from, "replay": cfg.replay, "schedule": cfg.schedule,
        "aux_loss_coef": coefs[0], "z_loss_coef": coefs[1], "steps": cfg.max_steps, "tokens": tokens,
        "train_seconds": round(seconds, 2), "tokens_per_s": tokens / max(seconds, 1e-9), "seed": cfg.seed,
        "final_loss": evals[-1]["loss"] if evals else {}, "initial_loss": evals[0]["loss"] if evals else {},
        "evals": evals,  # the held-out curves, for the report
    }
    if arch == "moe":
        summary["routing"] = {name: {"eval": routing_stats(model, b), "train": routing_stats(model, b, True)}
                              for name, b in eval_sets.items()}
        summary["router_grad_cosine"] = evals[-1].get("router_grad_cosine") if evals else None
        if init is not None:
            before = load_pretrained(cfg.init_from)
            summary["expert_changes"] = {name: expert_changes(before, model, b) for name, b in eval_sets.items()}
    try:
        from tunelab.moe.plots import pretrain_figures

        summary["figures"] = pretrain_figures(out, rows, summary)
    except ImportError:  # matplotlib missing: numbers only
        summary["figures"] = []
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    summary["wall_seconds"] = round(wall, 1)
    result = PretrainResult.from_dict(summary)
    result.write(run_dir, EVAL_FILE)
    console.print(f"pretrained {out}: held-out loss " + ", ".join(f"{k} {v:.4f}" for k, v in result.final_loss.items())
                  + f" · {result.tokens_per_s:.0f} tokens/s")
    return result


def _bar(console: Console, arch: str, router: str | None, enabled: bool = True) -> Progress:
    label = arch if arch == "dense" else f"moe/{router}"
    return Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                    TextColumn("{task.fields[tps]:.0f} tok/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, disable=not enabled)
