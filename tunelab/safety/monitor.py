"""The safety-drift monitor: refusals measured *during* training, as a training plug-in.

Safety can collapse within a few fine-tuning steps, so a before/after check can miss when it
happened. With ``--monitor-safety K`` the :class:`SafetyMonitor` plug-in measures, before the
first step (step 0), every ``K`` steps and at the last step, on a small fixed held-out set:

* the **refusal rate** on the first ``monitor_prompts`` HarmBench prompts of the *test* split (the
  safety adapter recipe trains on the *train* split, so these were never trained on);
* the **over-refusal** on as many benign look-alikes of the test split;
* with ``--monitor-prefill``, the **prefill ASR** at k = 5 (:func:`tunelab.safety.depth.prefill_attack`).

Answers are greedy, batched and short (``monitor_max_new_tokens``, 32), judged by the keyword
judge. The model goes to eval mode and back, under ``no_grad`` and with the RNG state restored,
so a monitored run trains exactly as an unmonitored one (same losses). Each measurement is a row
``{"step": s, "monitor": {...}}`` in ``metrics.jsonl``; ``tunelab.json`` gets ``safety_monitor``:
the series, the monitor's seconds against the training's, and ``stopped``.

``--stop-on-refusal-drop X`` ends training after the first measurement whose refusal rate is more
than ``X`` (a fraction: 0.2 = 20 points) below step 0's, and saves the weights of the measured step
with the best refusal rate (a CPU copy is kept; ties go to the later step, which trained more).

The monitor reads only public prompts and generates from the model; it never sees the training
data, gradients or the DP noise, so for ``dp-sgd``/``dp-zo`` runs it leaves the privacy ledger
(ε, δ) untouched. It runs in a single process: ``--fsdp`` and multi-process launches are refused.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tunelab.errors import TunelabError
from tunelab.options import option
from tunelab.train.plugins import Plugin, Run, StepInfo

PREFILL_K = 5  # prefilled tokens of the compliant opening for --monitor-prefill
BEST_FILE = "monitor-best.pt"  # the best measurement's weights, for a resumed run (removed when it finishes)
DP_NOTE = ("the monitor reads only public prompts (HarmBench test split, benign look-alikes) and generates from the "
           "model under no_grad; it never touches the training data, the gradients, the noise or the privacy ledger")


@dataclass
class SafetyMonitorConfig:
    """``monitor``: refusal rate (and prefill ASR) on a small held-out set every K steps."""

    every: int = option(0, plugin=True, min=0, flag="--monitor-safety", metavar="K",
                        help="measure the refusal rate on held-out prompts every K steps (0: off)")
    prefill: bool = option(False, plugin=True, flag="--monitor-prefill",
                           help="with --monitor-safety: also the prefill ASR at k=5")
    prompts: int = option(16, min=1, flag="--monitor-prompts", help="harmful prompts per measurement (and as many benign)")
    max_new_tokens: int = option(32, min=1, flag="--monitor-max-new-tokens", help="tokens generated per monitor prompt")
    stop_on_refusal_drop: float | None = option(None, plugin=True, gt=0, max=1, flag="--stop-on-refusal-drop",
                                                metavar="X",
                                                help="stop when the refusal rate falls more than X below step 0's; "
                                                     "keep the best measured weights (needs --monitor-safety)")

    def validate(self, run: Any) -> None:
        """The "needs --monitor-safety" rules first, then the bounds; no sharded runs."""
        if self.every < 0:
            raise TunelabError(f"--monitor-safety must be >= 0 (0: off), got {self.every}")
        if not self.every:
            if self.stop_on_refusal_drop is not None:
                raise TunelabError("--stop-on-refusal-drop needs --monitor-safety K (the refusal rate it watches)")
            if self.prefill:
                raise TunelabError("--monitor-prefill needs --monitor-safety K")
            return
        drop = self.stop_on_refusal_drop
        if drop is not None and not 0 < drop <= 1:
            raise TunelabError(f"--stop-on-refusal-drop must be a fraction in (0, 1], got {drop}")
        if self.prompts < 1:
            raise TunelabError(f"monitor_prompts must be >= 1, got {self.prompts}")
        if self.max_new_tokens < 1:
            raise TunelabError(f"monitor_max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if run.fsdp:
            raise TunelabError("--monitor-safety runs in a single process; it is not supported with --fsdp")


Measure = Callable[[Any, Any, list[dict[str, str]], list[dict[str, str]]], dict[str, Any]]


def monitor_prompts(n: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The fixed held-out set: the first ``n`` HarmBench test-split prompts and ``n`` benign look-alikes (test split)."""
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts

    harmful = harmful_prompts(split="test", limit=n)
    benign = benign_prompts(split="test", limit=n)
    if len(harmful) < n or len(benign) < n:
        raise TunelabError(f"monitor_prompts {n}: the held-out sets have only {len(harmful)} harmful and "
                           f"{len(benign)} benign prompts")
    return harmful, benign


def measure_safety(model: Any, tokenizer: Any, harmful: list[dict[str, str]], benign: list[dict[str, str]], *,
                   max_new_tokens: int = 32, prefill: bool = False, batch_size: int = 32) -> dict[str, Any]:
    """One measurement (greedy, keyword judge): refusal rate, over-refusal and, with ``prefill``,
    the prefill ASR at k = :data:`PREFILL_K`. The caller handles modes, gradients and RNG."""
    from tunelab.evaluate.judges import KeywordJudge
    from tunelab.evaluate.safety import evaluate_safety
    from tunelab.safety.depth import prefill_attack

    judge = KeywordJudge()
    suite = evaluate_safety(model, tokenizer, harmful, benign, judge, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, progress=False)
    row: dict[str, Any] = {"refusal_rate": suite["refusal_rate"], "over_refusal": suite["over_refusal"],
                           "intervals": {k: suite["intervals"][k] for k in ("refusal_rate", "over_refusal")},
                           "n_harmful": suite["n_harmful"], "n_benign": suite["n_benign"]}
    if prefill:
        attack = prefill_attack(model, tokenizer, [p["prompt"] for p in harmful], ks=(PREFILL_K,), judge=judge,
                                max_new_tokens=max_new_tokens, batch_size=batch_size)
        row["prefill_asr"] = attack["by_k"][0]["asr"]
        row["prefill_k"] = PREFILL_K
    return row


@contextlib.contextmanager
def side_effect_free(model: Any, device: torch.device, bf16: bool):
    """Eval mode, no gradients, bf16 autocast as in training, and the RNG state restored afterwards."""
    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast:
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


class SafetyMonitor(Plugin):
    """Measures refusals every K steps (section ``monitor``); may stop the run on a refusal drop."""

    claims = ("monitor_safety", "monitor_prefill", "stop_on_refusal_drop")

    def __init__(self, cfg: SafetyMonitorConfig, measure: Callable[..., dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.measure = measure or measure_safety  # tests plant a measurement here
        self.series: list[dict[str, Any]] = []  # {"step", **measurement, "seconds"}, in step order
        self.best: dict[str, Any] | None = None  # {"step", "refusal_rate", "weights"} (stop rule only)
        self.stopped: dict[str, Any] | None = None

    # -- hooks -------------------------------------------------------------------------------
    def on_prepared(self, run: Run) -> None:
        if run.accelerator.num_processes > 1:
            raise TunelabError("--monitor-safety runs in a single process; launch this run without torchrun/accelerate")
        self.harmful, self.benign = monitor_prompts(self.cfg.prompts)

    def on_loop_start(self, run: Run, step: int) -> None:
        if run.resumed:  # rows up to the checkpoint were kept in metrics.jsonl; measure only what is missing
            self.series = [{"step": r["step"], **r["monitor"]} for r in _rows(run.log.path) if "monitor" in r]
            self._load_best(run, step)
        due = step == 0 or step % self.cfg.every == 0  # a resumed run continues from any checkpointed step
        if due and not any(r["step"] == step for r in self.series):
            self._measure(run, step)

    def on_step(self, run: Run, info: StepInfo) -> None:
        if info.step % self.cfg.every and info.step != run.total_steps:
            return
        row = self._measure(run, info.step)
        drop, base = self.cfg.stop_on_refusal_drop, self.baseline
        if drop is None or base is None or not base["refusal_rate"] - row["refusal_rate"] > drop + 1e-9:
            return
        best = self.best
        assert best is not None  # step 0 was measured, so there is a best
        _load_weights(run, best["weights"])
        self.stopped = {"reason": f"refusal rate fell more than {drop:g} below step 0's", "step": info.step,
                        "refusal_rate": row["refusal_rate"], "baseline": base["refusal_rate"], "threshold": drop,
                        "best_step": best["step"], "best_refusal_rate": best["refusal_rate"]}
        run.stop_reason = f"safety monitor: {self.stopped['reason']}"
        run.console.print(f"[yellow]stopping after step {info.step}[/]: refusal {row['refusal_rate']:.1%} is more than "
                          f"{drop * 100:g} points below step 0's {base['refusal_rate']:.1%}; saving the weights of step "
                          f"{best['step']} (refusal {best['refusal_rate']:.1%})", highlight=False)

    def on_finish(self, run: Run, record: dict[str, Any]) -> None:
        total = sum(r["seconds"] for r in self.series)
        # The training clock (wall_time_s, read at the last step) ran through the measurements after
        # steps 1 .. last-1; step 0's ran before it started and the last step's after it stopped.
        steps = record.get("steps") or 0
        in_loop = sum(r["seconds"] for r in self.series if 0 < r["step"] < steps)
        train_seconds = max(0.0, (record.get("wall_time_s") or 0.0) - in_loop)
        entry: dict[str, Any] = {
            "every": self.cfg.every, "prefill": self.cfg.prefill, "prefill_k": PREFILL_K if self.cfg.prefill else None,
            "prompts": {"harmful": "HarmBench test split", "benign": "benign look-alikes, test split",
                        "n_harmful": len(self.harmful), "n_benign": len(self.benign)},
            "max_new_tokens": self.cfg.max_new_tokens, "judge": "keyword",
            "series": self.series,
            "seconds": total, "seconds_per_measurement": total / len(self.series) if self.series else None,
            "train_seconds": train_seconds,
            "stop_on_refusal_drop": self.cfg.stop_on_refusal_drop, "stopped": self.stopped,
        }
        if getattr(run.cfg, "private", False):
            entry["dp_note"] = DP_NOTE
        record["safety_monitor"] = entry
        (run.out / BEST_FILE).unlink(missing_ok=True)
        share = total / (total + train_seconds) if total + train_seconds else 0.0
        if not self.series:
            return
        first, last = self.series[0], self.series[-1]
        run.console.print(f"safety monitor: refusal {first['refusal_rate']:.0%} (step {first['step']}) → "
                          f"{last['refusal_rate']:.0%} (step {last['step']}); {len(self.series)} measurements, "
                          f"{total:.1f} s ({share:.0%} of the run; training {train_seconds:.1f} s)", highlight=False)

    # -- internals ---------------------------------------------------------------------------
    @property
    def baseline(self) -> dict[str, Any] | None:
        """The step-0 measurement."""
        return next((r for r in self.series if r["step"] == 0), None)

    def _measure(self, run: Run, step: int) -> dict[str, Any]:
        model = run.prepared.model
        started = time.perf_counter()
        with side_effect_free(model, run.accelerator.device, bool(run.cfg.bf16)):
            row = self.measure(model, run.tokenizer, self.harmful, self.benign, max_new_tokens=self.cfg.max_new_tokens,
                               prefill=self.cfg.prefill)
        row = {"step": step, **row, "seconds": round(time.perf_counter() - started, 3)}
        self.series = [r for r in self.series if r["step"] != step] + [row]
        run.log.write_row({"step": step, "monitor": {k: v for k, v in row.items() if k != "step"}})
        if self.cfg.stop_on_refusal_drop is not None and (self.best is None or row["refusal_rate"] >= self.best["refusal_rate"]):
            self.best = {"step": step, "refusal_rate": row["refusal_rate"], "weights": _trainable_copy(run)}
            _save_best(run.out / BEST_FILE, self.best)  # for a resumed run (Ctrl-C checkpoints even without --save-every)
        base = self.baseline
        delta = "" if base is None or step == 0 else f" ({(row['refusal_rate'] - base['refusal_rate']) * 100:+.0f} pt)"
        prefill = f", prefill@{PREFILL_K} ASR {row['prefill_asr']:.0%}" if "prefill_asr" in row else ""
        run.console.print(f"monitor step {step}: refusal {row['refusal_rate']:.0%}{delta}, over-refusal "
                          f"{row['over_refusal']:.0%}{prefill} · {row['seconds']:.1f} s", highlight=False)
        return row

    def _load_best(self, run: Run, step: int) -> None:
        path = run.out / BEST_FILE
        if self.cfg.stop_on_refusal_drop is None or not path.is_file():
            return
        best = torch.load(path, map_location="cpu", weights_only=True)
        if int(best["step"]) <= step:  # a best measured after the checkpoint is trained again
            self.best = {"step": int(best["step"]), "refusal_rate": float(best["refusal_rate"]), "weights": best["weights"]}


def _rows(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _trainable_copy(run: Run) -> dict[str, torch.Tensor]:
    """A CPU copy of the trainable weights."""
    return {n: p.detach().to("cpu", copy=True) for n, p in run.prepared.model.named_parameters() if p.requires_grad}


def _load_weights(run: Run, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in run.prepared.model.named_parameters():
            if name in weights:
                param.copy_(weights[name].to(param.device, param.dtype))


def _save_best(path: Path, best: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"step": best["step"], "refusal_rate": best["refusal_rate"], "weights": best["weights"]}, tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class MonitorPoint:
    """One measurement of the monitor (a ``metrics.jsonl`` row's ``"monitor"``, with its step)."""

    step: int
    refusal_rate: float
    over_refusal: float
    prefill_asr: float | None  # None without --monitor-prefill
    seconds: float

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> MonitorPoint:
        """From a ``series`` entry (``{"step", "refusal_rate", ...}``)."""
        asr = row.get("prefill_asr")
        return cls(int(row["step"]), float(row["refusal_rate"]), float(row["over_refusal"]),
                   None if asr is None else float(asr), float(row.get("seconds") or 0.0))


@dataclass(frozen=True)
class MonitorRecord:
    """``tunelab.json``'s ``safety_monitor``, typed: what a study reads of each arm's monitor."""

    every: int
    series: tuple[MonitorPoint, ...]
    seconds: float  # the monitor's, all measurements
    train_seconds: float  # training without the measurements
    stopped: dict[str, Any] | None  # {reason, step, refusal_rate, baseline, threshold, best_step, best_refusal_rate}
    dp_note: str | None = None

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> MonitorRecord:
        """From the record entry."""
        return cls(int(entry["every"]), tuple(MonitorPoint.from_dict(r) for r in entry.get("series") or []),
                   float(entry.get("seconds") or 0.0), float(entry.get("train_seconds") or 0.0), entry.get("stopped"),
                   entry.get("dp_note"))

    @classmethod
    def read(cls, run_dir: str | Path) -> MonitorRecord | None:
        """The monitor record of a finished run directory; None when the run was not monitored."""
        import json

        from tunelab.layout import RUN_FILE

        entry = json.loads((Path(run_dir) / RUN_FILE).read_text()).get("safety_monitor")
        return cls.from_dict(entry) if entry else None


__all__ = ["BEST_FILE", "DP_NOTE", "PREFILL_K", "MonitorPoint", "MonitorRecord", "SafetyMonitor", "SafetyMonitorConfig",
           "measure_safety",
           "monitor_prompts", "side_effect_free"]
