"""GPU checks for the training spine: bf16 CUDA training, LoRI-S invariant, PEFT reload, MFU.

Meant for a CUDA machine; everything runs in one process so every side shares the GPU state.

    python bench/gpu_check.py make-model --config-dir DIR --out MODEL_DIR
        SmolLM2-135M architecture (config.json + tokenizer from DIR), random init (seed 0), fp32.
    python bench/gpu_check.py spine --model MODEL_DIR --data train.jsonl --work WORK [--batch-sizes 16,128]
        For each batch size, one epoch over the same examples: tunelab lora, lori-d, lori-s
        (mask from that lori-d) and PEFT LoRA + HF Trainer (bf16=True). Reports loss first/last,
        useful tokens/s, MFU against the measured bf16 matmul peak, peak CUDA memory, the ratios,
        the LoRI-S invariant (in memory and on disk) and whether the saved adapter reloads in
        plain PEFT with identical logits.
    python bench/gpu_check.py compare RUN_A RUN_B
        Losses and adapter tensors of two finished runs (e.g. DDP vs one process).
    python bench/gpu_check.py fsdp --model MODEL_DIR --data train.jsonl --work WORK [--gpus N]
        FSDP2 on CUDA: for lora, lori-d, lori-s and full, `torchrun --nproc_per_node N ... --fsdp`
        (nccl) against one plain process with --grad-accum N on the same micro-batches, fp32 unless
        --bf16; prints the largest weight difference, the LoRI-S invariant on disk, each side's tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import flops_per_token  # noqa: E402


def diag() -> None:
    """Host-side cost of one CUDA op (launch-bound steps) and the GPU time of a tiny op."""
    x = torch.zeros(16, device="cuda")
    for _ in range(100):
        x.add_(1)
    torch.cuda.synchronize()
    n = 5000
    t = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    host = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / n
    a = torch.randn(16 * 50, 576, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(576, 1536, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        a @ w
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        a @ w
    mm_host = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    mm_wall = (time.perf_counter() - t) / n
    print(f"diag: x.add_ {host * 1e6:.1f} us host / {wall * 1e6:.1f} us wall per op; "
          f"800x576 @ 576x1536 bf16 {mm_host * 1e6:.1f} us host / {mm_wall * 1e6:.1f} us wall; "
          f"torch threads {torch.get_num_threads()}")


def make_model(config_dir: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    for name in ("chat_template.jinja", "generation_config.json"):
        if (config_dir / name).is_file() and not (out / name).is_file():
            shutil.copy(config_dir / name, out / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: {out} ({n / 1e6:.1f}M params) from {config_dir}: {config.to_diff_dict()}")


def matmul_peak_cuda() -> float:
    """bf16 TFLOP/s of 8192^3 matmuls (mean of 20 after warm-up)."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (time.perf_counter() - t) / 1e12


def _capture_plugin():  # noqa: ANN202
    """A training plug-in that keeps the trained model (for the reload and invariant checks)."""
    from tunelab.train import Plugin

    class Capture(Plugin):
        def on_finish(self, run, record) -> None:  # noqa: ANN001
            Captured.prepared = run.prepared

    return Capture()


class Captured:
    prepared = None


def _lora_tensors(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {n: p.detach().float().cpu() for n, p in model.named_parameters() if "lora_" in n}


def reload_check(model_dir: str, run: Path, trained) -> dict:  # noqa: ANN001
    """Plain PEFT reload of the saved adapter vs the in-memory trained model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.train.precision import prepare_for_bf16

    torch.manual_seed(1)
    ids = torch.randint(3, 49000, (4, 64), device="cuda")
    trained.eval()
    # The trainer keeps frozen base weights in bf16, so the in-memory model runs under autocast only.
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = trained(input_ids=ids).logits.float()
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda()
    peft = PeftModel.from_pretrained(base, str(run)).eval()
    t_mem, t_disk = _lora_tensors(trained), _lora_tensors(peft)
    same_tensors = t_mem.keys() == t_disk.keys() and all(torch.equal(t_mem[k], t_disk[k]) for k in t_mem)
    with torch.no_grad():
        pure32 = peft(input_ids=ids).logits.float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            plain16 = peft(input_ids=ids).logits.float()
        prepare_for_bf16(peft)  # exactly what the trainer did to its copy
        with torch.autocast("cuda", dtype=torch.bfloat16):
            prep16 = peft(input_ids=ids).logits.float()
    del base, peft
    torch.cuda.empty_cache()
    return {
        "adapter_tensors_bitwise_equal": same_tensors,
        "n_lora_tensors": len(t_disk),
        "logits_identical_plain_peft_fp32_weights_bf16_autocast": bool(torch.equal(ref, plain16)),
        "logits_identical_plain_peft_after_prepare_for_bf16": bool(torch.equal(ref, prep16)),
        "max_abs_diff_plain_autocast": float((ref - plain16).abs().max()),
        "max_abs_diff_pure_fp32_no_autocast": float((ref - pure32).abs().max()),
        "logit_abs_max": float(ref.abs().max()),
    }


def lori_s_invariant(run: Path, prepared) -> dict:  # noqa: ANN001
    from safetensors.torch import load_file

    from tunelab.adapters.base import lora_layers

    mem_nonzero = 0
    for key, layer in (lora_layers(prepared.model) if prepared is not None else []):
        w = layer.lora_B["default"].weight.detach()
        m = prepared.masks[key].to(w.device)
        mem_nonzero += int((w[~m] != 0).sum())
    weights = load_file(run / "adapter_model.safetensors")
    from tunelab.adapters.base import module_key
    from tunelab.adapters.storage import load_masks
    from tunelab.layout import MASK_FILE

    masks = load_masks(run / MASK_FILE)

    disk_nonzero, inside_nonzero, outside_total = 0, 0, 0
    for name, t in weights.items():
        if not name.endswith(".lora_B.weight"):
            continue
        m = masks[module_key(name.removesuffix(".lora_B.weight"))]
        if m.dtype != torch.bool:
            m = m.bool()
        if m.shape != t.shape:
            return {"error": f"mask file layout {tuple(m.shape)} vs B {tuple(t.shape)} (packed?)"}
        disk_nonzero += int((t[~m] != 0).sum())
        inside_nonzero += int((t[m] != 0).sum())
        outside_total += int((~m).sum())
    return {"outside_mask_nonzero_in_memory": mem_nonzero, "outside_mask_nonzero_on_disk": disk_nonzero,
            "outside_mask_entries": outside_total, "inside_mask_nonzero_on_disk": inside_nonzero,
            "holds": mem_nonzero == 0 and disk_nonzero == 0}


def tunelab_run(model_dir: str, data: Path, method: str, steps: int, bs: int, rank: int, out: Path, **kw) -> dict:  # noqa: ANN003
    from tunelab.finetune import TrainConfig, plugins_for
    from tunelab.train import fit

    cfg = TrainConfig(model=model_dir, data=str(data), method=method, output=str(out), rank=rank, alpha=2 * rank,
                      max_steps=steps, batch_size=bs, seed=0, save_every=0, overwrite=True, bf16=True, **kw)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    Captured.prepared = None
    fit(cfg, [*plugins_for(cfg), _capture_plugin()])
    torch.cuda.synchronize()
    run = json.loads((out / "tunelab.json").read_text())
    losses = run["losses"]
    k = max(1, len(losses) // 10)
    return {"method": method, "seconds": run["wall_time_s"], "tokens": run["tokens"], "steps": run["steps"],
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "peak_cuda_mb": (torch.cuda.max_memory_allocated() - before) / 2**20,
            "trainable_params": run["trainable_params"], "lr": run["config"]["lr"]}


def peft_trainer_run(model_dir: str, data: Path, steps: int, bs: int, rank: int, lr: float, work: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from tunelab.data import read_records, tokenize_records
    from tunelab.models import load_model

    model, tokenizer = load_model(model_dir)
    examples, _ = tokenize_records(read_records(data), tokenizer, 512)
    dataset = [{"input_ids": ex.input_ids, "labels": ex.labels, "attention_mask": [1] * len(ex.input_ids)} for ex in examples]
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    times: dict[str, float] = {}
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):  # noqa: ANN002, ANN003
            torch.cuda.synchronize()
            times["start"] = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **k):  # noqa: ANN001, ANN003
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

        def on_train_end(self, *a, **k):  # noqa: ANN002, ANN003
            torch.cuda.synchronize()
            times["end"] = time.perf_counter()

    args = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=bs, max_steps=steps,
                             learning_rate=lr, report_to=[], save_strategy="no", logging_steps=max(1, steps // 10),
                             disable_tqdm=True, seed=0, bf16=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
                      callbacks=[Clock()])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    trainer.train()
    out = {"method": "peft+trainer", "seconds": times["end"] - times["start"],
           "peak_cuda_mb": (torch.cuda.max_memory_allocated() - before) / 2**20,
           "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None, "lr": lr}
    del trainer, model
    torch.cuda.empty_cache()
    return out


def _guard(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        print(f"!! {fn.__name__} failed:\n{traceback.format_exc()[-3000:]}", flush=True)
        return {"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()}


def spine(args: argparse.Namespace) -> None:
    import transformers

    from tunelab.data import read_records, tokenize_records
    from tunelab.models import load_model

    transformers.logging.set_verbosity_error()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    peak = matmul_peak_cuda()
    print(f"bf16 matmul peak (8192^3): {peak:.0f} TFLOP/s", flush=True)
    all_lines = Path(args.data).read_text().splitlines()
    report: dict = {"device": props.name, "bf16_peak_tflops": peak, "configs": []}
    model, tokenizer = load_model(args.model)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        steps, n = args.steps, args.steps * bs
        lines = (all_lines * (n // len(all_lines) + 1))[:n]  # cycle when the task has fewer distinct examples
        data = work / f"train-{bs}.jsonl"
        data.write_text("\n".join(lines) + "\n")
        examples, _ = tokenize_records(read_records(data), tokenizer, 512)
        useful = sum(len(ex.input_ids) for ex in examples)
        supervised = sum(ex.n_loss_tokens for ex in examples)
        per_token = flops_per_token(model, useful / len(examples), supervised / useful)
        print(f"\n== batch {bs}: {len(examples)} examples, {steps} steps, {useful} useful tokens "
              f"(mean {useful / len(examples):.1f}), {supervised} supervised; {per_token / 1e9:.3f} GFLOP/token", flush=True)
        conf: dict = {"batch_size": bs, "steps": steps, "examples": len(examples), "useful_tokens": useful,
                      "gflop_per_token": per_token / 1e9, "runs": {}, "checks": {}}
        report["configs"].append(conf)
        if bs == int(args.batch_sizes.split(",")[0]):
            # warm-up: CUDA context, cuBLAS handles, allocator (not reported)
            tunelab_run(args.model, data, "lora", 5, bs, args.rank, work / "warmup")
        for method in ("lora", "lori-d", "lori-s"):
            out = work / f"{method}-{bs}"
            kw = {"mask_from": str(work / f"lori-d-{bs}")} if method == "lori-s" else {}
            try:
                res = tunelab_run(args.model, data, method, steps, bs, args.rank, out, **kw)
            except Exception as exc:  # noqa: BLE001
                err = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                print(f"!! tunelab {method} failed: {err}\n{traceback.format_exc()[-3000:]}", flush=True)
                conf["runs"][method] = {"error": err}
                continue
            conf["runs"][method] = res
            if method in ("lora", "lori-s"):
                conf["checks"][f"{method}_reload"] = _guard(reload_check, args.model, out, Captured.prepared.model)
            if method == "lori-s":
                conf["checks"]["lori_s_invariant"] = _guard(lori_s_invariant, out, Captured.prepared)
            Captured.prepared = None
            torch.cuda.empty_cache()
            print(f"   {method}: {json.dumps(res)}", flush=True)
        conf["runs"]["peft+trainer"] = _guard(peft_trainer_run, args.model, data, steps, bs, args.rank, 2e-4, work)
        print(f"   peft+trainer: {json.dumps(conf['runs']['peft+trainer'])}", flush=True)
        base = useful / conf["runs"]["peft+trainer"].get("seconds", float("nan"))
        print(f"\n{'':14s} {'useful tok/s':>12s} {'vs PEFT':>8s} {'MFU':>6s} {'peak MB':>8s} {'loss first->last':>18s}")
        for name, r in conf["runs"].items():
            if "seconds" not in r:
                print(f"{name:14s} FAILED: {r['error'][:200]}")
                continue
            tps = useful / r["seconds"]
            r["useful_tok_s"], r["vs_peft"], r["mfu"] = tps, tps / base, tps * per_token / (peak * 1e12)
            print(f"{name:14s} {tps:12.0f} {tps / base:7.2f}x {r['mfu']:6.1%} {r['peak_cuda_mb']:8.0f} "
                  f"{r['loss_first']:8.3f}->{r['loss_last']:.3f}")
        print("checks:", json.dumps(conf["checks"], indent=1), flush=True)
    text = json.dumps(report, indent=1)
    (work / "gpu_check.json").write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)


def compare(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    ra, rb = (json.loads((p / "tunelab.json").read_text()) for p in (a, b))
    la, lb = ra["losses"], rb["losses"]
    print(f"{a}: {ra['steps']} steps, tokens {ra['tokens']}; {b}: {rb['steps']} steps, tokens {rb['tokens']}")
    print("losses A:", [round(x, 5) for x in la])
    print("losses B:", [round(x, 5) for x in lb])
    print("max |loss diff|:", max(abs(x - y) for x, y in zip(la, lb)) if la and lb else None)
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    print(f"adapter keys equal: {wa.keys() == wb.keys()} ({len(wa)} tensors)")
    diffs = [(float((wa[k].float() - wb[k].float()).abs().max()), float(wa[k].float().abs().max()), k) for k in wa if k in wb]
    worst = max(diffs)
    print(f"max |tensor diff| {worst[0]:.3g} (|values| up to {worst[1]:.3g}) at {worst[2]}; "
          f"bitwise equal tensors: {sum(d[0] == 0 for d in diffs)}/{len(diffs)}")


def fsdp_check(args: argparse.Namespace) -> None:
    """The FSDP2 path on CUDA: sharded ranks vs one plain process with accumulation, per method."""
    import subprocess

    from safetensors.torch import load_file

    gpus = args.gpus or torch.cuda.device_count()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    common = ["train", "--model", args.model, "--data", args.data, "--max-steps", str(args.steps), "--batch-size", "8",
              "--seed", "0", "--rank", "16", "--alpha", "32", "--save-every", "0", "--overwrite",
              "--bf16" if args.bf16 else "--no-bf16"]  # fp32 by default: the sides then agree to fp32 rounding
    extra = {"lora": ["--lr", "1e-3"], "lori-d": ["--lr", "1e-3"], "full": ["--lr", "1e-5"],
             "lori-s": ["--lr", "1e-2", "--mask-from", str(work / "lori-d-single")]}
    report = {}
    for method in ("lora", "lori-d", "lori-s", "full"):
        args_m = [*common, "--method", method, *extra[method]]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(gpus), "-m", "tunelab.cli"]
        runs = {"fsdp": [*torchrun, *args_m, "--fsdp", "--output", str(work / f"{method}-fsdp")],
                "single": [sys.executable, "-m", "tunelab.cli", *args_m, "--grad-accum", str(gpus),
                           "--output", str(work / f"{method}-single")]}
        row: dict = {}
        for side in ("single", "fsdp"):  # single first: lori-s takes its mask from lori-d-single
            result = subprocess.run(runs[side], capture_output=True, text=True)
            if result.returncode != 0:
                row[side] = {"error": result.stderr[-1500:]}
                continue
            record = json.loads((work / f"{method}-{side}" / "tunelab.json").read_text())
            row[side] = {"tokens_per_s": record["tokens_per_s"], "final_loss": record["losses"][-1]}
        if all("error" not in row[s] for s in ("single", "fsdp")):
            files = {s: next((work / f"{method}-{s}").glob("*.safetensors")) for s in ("single", "fsdp")}
            if method != "full":
                files = {s: work / f"{method}-{s}" / "adapter_model.safetensors" for s in ("single", "fsdp")}
            a, b = load_file(files["single"]), load_file(files["fsdp"])
            row["max_abs_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
            if method == "lori-s":
                row["lori_s_invariant"] = lori_s_invariant(work / "lori-s-fsdp", None)
        report[method] = row
        print(f"{method}: {json.dumps(row)}", flush=True)
    (work / "fsdp_check.json").write_text(json.dumps(report, indent=1))
    if os.environ.get("OUT"):
        shutil.copy(work / "fsdp_check.json", Path(os.environ["OUT"]) / "fsdp_check.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-model")
    p.add_argument("--config-dir", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("spine")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--batch-sizes", default="16,128")
    p.add_argument("--steps", type=int, default=100, help="steps per batch size (one epoch over steps*bs examples)")
    p.add_argument("--rank", type=int, default=32)
    p = sub.add_parser("diag")
    p = sub.add_parser("check-mask")
    p.add_argument("run")
    p = sub.add_parser("compare")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("fsdp")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--gpus", type=int, default=0, help="ranks (default: every visible GPU)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (the plain side also stores frozen weights in bf16)")
    args = parser.parse_args()
    if args.cmd == "make-model":
        make_model(Path(args.config_dir), Path(args.out))
    elif args.cmd == "spine":
        spine(args)
    elif args.cmd == "diag":
        diag()
    elif args.cmd == "fsdp":
        fsdp_check(args)
    elif args.cmd == "check-mask":
        print("LoRI-S invariant on disk:", json.dumps(lori_s_invariant(Path(args.run), None)))
    else:
        compare(Path(args.a), Path(args.b))


if __name__ == "__main__":
    main()
