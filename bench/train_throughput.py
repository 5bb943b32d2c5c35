"""Training throughput: PEFT LoRA + HF Trainer (defaults) vs tunelab LoRA vs tunelab LoRI-S.

One process, same model (smollm2-135m), same data (one epoch over the same examples), same
batch size, rank and steps. Prints useful (non-padding) tokens/s, peak extra memory, MFU
against this CPU's measured matmul peak, the ratios, and adapter file sizes.

    .venv/bin/python bench/train_throughput.py [--examples 256] [--batch-size 8] [--repeats 3]

With ``--repeats N`` every side runs N times, interleaved, and the table shows medians (tok/s range
in the last column; peak memory is the largest of the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from tunelab.adapters.storage import COMPACT_FILE, PEFT_WEIGHTS  # noqa: E402
from tunelab.data import read_records, tokenize_records  # noqa: E402
from tunelab.models import load_model  # noqa: E402
from tunelab.tasks import TASKS  # noqa: E402
from tunelab.finetune import TrainConfig, train  # noqa: E402

transformers.logging.set_verbosity_error()


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def matmul_peak(dtype: torch.dtype) -> float:
    """Best GFLOP/s of a few large matmuls in ``dtype`` on this machine."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(4096, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(3):
            a @ b
        t, reps = time.perf_counter(), 10
        for _ in range(reps):
            a @ b
        best = max(best, 2 * 4096 * n * n * reps / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_token(model: torch.nn.Module, seq_len: float, supervised_fraction: float) -> float:
    """FLOPs a frozen-base adapter step must do per token: forward + backward to activations.

    Linear layers: 2·P forward + 2·P backward (no weight grads for frozen weights). Attention
    scores/values: 4·L·seq·d forward, twice that backward. The LM head is needed only on
    supervised positions. Adapter FLOPs (rank ≪ d) are left out.
    """
    cfg = model.config
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    linear = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "lm_head" not in n)
    attention = 4 * layers * seq_len * d
    return 4 * linear + 3 * attention + 4 * vocab * d * supervised_fraction


def peft_trainer_run(data: Path, steps: int, batch_size: int, rank: int, lr: float, workdir: Path) -> tuple[float, float]:
    """PEFT LoRA with HF Trainer as a PEFT user writes it (Trainer defaults otherwise)."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer = load_model("smollm2-135m")
    examples, _ = tokenize_records(read_records(data), tokenizer, 512)
    dataset = [{"input_ids": ex.input_ids, "labels": ex.labels, "attention_mask": [1] * len(ex.input_ids)} for ex in examples]
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    args = TrainingArguments(output_dir=str(workdir / "hf"), per_device_train_batch_size=batch_size, max_steps=steps,
                             learning_rate=lr, report_to=[], save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    with PeakRSS() as mem:
        t = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t
    model.save_pretrained(workdir / "hf-adapter")
    return seconds, mem.extra_mb


def tunelab_run(data: Path, method: str, steps: int, batch_size: int, rank: int, lr: float, out: Path, **kw: object) -> tuple[float, float, dict]:
    cfg = TrainConfig(model="smollm2-135m", data=str(data), method=method, output=str(out), rank=rank, alpha=2 * rank,
                      lr=lr, max_steps=steps, batch_size=batch_size, seed=0, save_every=0, overwrite=True, **kw)
    with PeakRSS() as mem:
        train(cfg)
    run = json.loads((out / "tunelab.json").read_text())
    return run["wall_time_s"], mem.extra_mb, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every side this many times, interleaved, and report the median (this 2-core "
                             "machine drifts by about ±10%% between runs)")
    args = parser.parse_args()
    steps = args.examples // args.batch_size  # exactly one epoch: every side sees the same tokens
    work = Path(tempfile.mkdtemp(prefix="tunelab-bench-"))

    # A mix of both built-in tasks, so lengths vary as real data does.
    rows = [r for name in TASKS for r in TASKS[name].examples("train", args.examples // len(TASKS), seed=0)]
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model, tokenizer = load_model("smollm2-135m")
    examples, _ = tokenize_records(read_records(data), tokenizer, 512)
    useful = sum(len(ex.input_ids) for ex in examples)
    supervised = sum(ex.n_loss_tokens for ex in examples)
    mean_len = useful / len(examples)
    per_token = flops_per_token(model, mean_len, supervised / useful)
    del model

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    print(f"data: {len(examples)} examples, {useful} useful tokens (mean {mean_len:.1f}), {supervised} supervised; "
          f"{steps} steps x batch {args.batch_size}, rank {args.rank}")

    def lori_s() -> tuple[float, float]:
        if not (work / "lori-d" / "tunelab.json").is_file():  # the mask source, trained once
            tunelab_run(data, "lori-d", steps, args.batch_size, args.rank, 1e-4, work / "lori-d")
        return tunelab_run(data, "lori-s", steps, args.batch_size, args.rank, 1e-3, work / "lori-s",
                           mask_from=str(work / "lori-d"))[:2]

    sides = {
        "PEFT LoRA + HF Trainer": lambda: peft_trainer_run(data, steps, args.batch_size, args.rank, 1e-4, work),
        "tunelab LoRA": lambda: tunelab_run(data, "lora", steps, args.batch_size, args.rank, 1e-4, work / "lora")[:2],
        "tunelab LoRI-S": lori_s,
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, run_side in sides.items():
            results[name].append(run_side())
    run = json.loads((work / "lori-s" / "tunelab.json").read_text())

    rates = {name: [useful / s for s, _ in runs] for name, runs in results.items()}
    base_tps = statistics.median(rates["PEFT LoRA + HF Trainer"])
    spread = f" {'range':>11s}" if args.repeats > 1 else ""
    print(f"\n{'':26s} {'useful tok/s':>12s} {'vs PEFT':>8s} {'peak extra MB':>14s} {'MFU bf16':>9s} {'MFU fp32':>9s}{spread}")
    for name, runs in results.items():
        tps = statistics.median(rates[name])
        gflops = tps * per_token / 1e9
        mb = max(m for _, m in runs)
        extra = f" {min(rates[name]):5.0f}-{max(rates[name]):<5.0f}" if args.repeats > 1 else ""
        print(f"{name:26s} {tps:12.0f} {tps / base_tps:7.2f}x {mb:14.0f} {gflops / peak16:8.1%} {gflops / peak32:8.1%}{extra}")

    lora_file = (work / "lora" / PEFT_WEIGHTS).stat().st_size
    compact = (work / "lori-s" / COMPACT_FILE).stat().st_size
    print(f"\nadapter files at rank {args.rank}: LoRA {lora_file / 1e6:.2f} MB, LoRI-S compact {compact / 1e6:.3f} MB "
          f"= {compact / lora_file:.1%} of LoRA; LoRI-S trainable params {run['trainable_params']:,}")


if __name__ == "__main__":
    main()
