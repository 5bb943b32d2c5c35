"""Per-rank memory of full fine-tuning under FSDP2: what sharding buys with N processes.

Builds a ``full`` fine-tuning setup (every parameter trainable, AdamW), shards it with
``tunelab.train.fsdp.shard_model`` (also with one process, so both runs take the same code
path), runs one training step and prints per rank: parameter bytes held locally, optimizer-state
bytes held locally, their sum and the peak RSS. Rank 0 adds a summary line. With N ranks the
parameter and optimizer figures should be ~1/N of the 1-process ones.

    ACCELERATE_USE_CPU=true torchrun --nproc_per_node N bench/fsdp_memory.py [--model smollm2-135m|tiny-random]
    .venv/bin/python bench/fsdp_memory.py --compare [--model ...]   # runs N=1 and N=2, prints the ratios

Peak RSS counts everything the process ever held, including the full fp32 model every rank
loads before sharding it, so it shrinks by much less than the sharded state does; "RSS after"
(current RSS after the step) is closer to the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402

JSON_TAG = "FSDP_MEMORY_JSON "
MB = 1024 * 1024


def _local_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the parts of ``tensors`` this rank holds (a DTensor's local shard)."""
    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def _rss_now_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _init_dist() -> tuple[int, int, torch.device]:
    force_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    use_cuda = torch.cuda.is_available() and not force_cpu
    if "RANK" not in os.environ:  # plain `python bench/fsdp_memory.py`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def measure(model_name: str, seq_len: int, batch_size: int, emit_json: bool = False) -> None:
    """One sharded full fine-tuning step; prints per-rank figures and (rank 0) the summary."""
    from tunelab.models import load_model
    from tunelab.train import fsdp

    rank, world, device = _init_dist()
    torch.manual_seed(0)
    model, _ = load_model(model_name)
    for p in model.parameters():
        p.requires_grad_(True)
    fsdp.shard_model(model, fsdp.mesh_for(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    # each rank its own random batch, as in data-parallel training
    gen = torch.Generator().manual_seed(1000 + rank)
    ids = torch.randint(3, model.config.vocab_size, (batch_size, seq_len), generator=gen).to(device)
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grad_norm = fsdp.clip_grad_norm(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - start

    params = list(model.parameters())
    opt_state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    row: dict[str, Any] = {
        "rank": rank,
        "world": world,
        "param_bytes": _local_bytes(params),
        "param_elems_full": sum(p.numel() for p in params),
        "optim_bytes": _local_bytes(opt_state),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
        "rss_after_bytes": _rss_now_bytes(),
        "step_s": step_s,
        "loss": loss.item(),
        "grad_norm": grad_norm,
    }
    row["sum_bytes"] = row["param_bytes"] + row["optim_bytes"]
    if device.type == "cuda":
        row["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    rows: list[dict[str, Any]] = [{}] * world
    dist.all_gather_object(rows, row)  # print in rank order from one process
    if rank == 0:
        for r in rows:
            cuda = f", CUDA peak {r['cuda_peak_bytes'] / MB:.1f} MiB" if "cuda_peak_bytes" in r else ""
            print(f"rank {r['rank']}/{world}: params {r['param_bytes'] / MB:.1f} MiB, "
                  f"optimizer state {r['optim_bytes'] / MB:.1f} MiB, sum {r['sum_bytes'] / MB:.1f} MiB, "
                  f"peak RSS {r['peak_rss_bytes'] / MB:.1f} MiB (RSS after {r['rss_after_bytes'] / MB:.1f} MiB){cuda}, "
                  f"step {r['step_s']:.2f} s")
        full_sum = rows[0]["param_elems_full"] * 4 * 3  # fp32 weights + AdamW's two moments
        worst = max(r["sum_bytes"] for r in rows)
        print(f"summary {model_name} world={world}: params+optimizer per rank max {worst / MB:.1f} MiB "
              f"= {worst / full_sum:.3f} of unsharded {full_sum / MB:.1f} MiB; "
              f"peak RSS max {max(r['peak_rss_bytes'] for r in rows) / MB:.1f} MiB; "
              f"loss {rows[0]['loss']:.4f}, grad norm {rows[0]['grad_norm']:.4f}")
        if emit_json:  # for --compare, which parses it
            print(JSON_TAG + json.dumps({"model": model_name, "world": world, "rows": rows}), flush=True)
    dist.destroy_process_group()


def compare(model_name: str, seq_len: int, batch_size: int, worlds: list[int]) -> None:
    """Run the measurement under torchrun for each world size and print the per-rank ratios."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    results: dict[int, dict[str, Any]] = {}
    for world in worlds:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
               "--master_port", str(port), os.path.abspath(__file__),
               "--model", model_name, "--seq-len", str(seq_len), "--batch-size", str(batch_size), "--json"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"world={world} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith(JSON_TAG):
                results[world] = json.loads(line[len(JSON_TAG):])
            else:
                print(line)
    base = results[worlds[0]]["rows"][0]
    for world in worlds[1:]:
        rows = results[world]["rows"]
        for key, label in (("param_bytes", "params"), ("optim_bytes", "optimizer state"),
                           ("sum_bytes", "params+optimizer"), ("peak_rss_bytes", "peak RSS"),
                           ("rss_after_bytes", "RSS after step")):
            worst = max(r[key] for r in rows)
            print(f"ratio {label}: world={world} per rank (max) / world={worlds[0]} = "
                  f"{worst / MB:.1f} / {base[key] / MB:.1f} MiB = {worst / base[key]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m | tiny-random | a model directory")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--compare", action="store_true", help="launch torchrun for 1 and 2 processes and print ratios")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line (rank 0)")
    ap.add_argument("--worlds", default="1,2", help="world sizes for --compare (first is the baseline)")
    args = ap.parse_args()
    if args.compare:
        compare(args.model, args.seq_len, args.batch_size, [int(w) for w in args.worlds.split(",")])
    else:
        measure(args.model, args.seq_len, args.batch_size, args.json)


if __name__ == "__main__":
    main()
