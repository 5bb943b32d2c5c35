"""Wall time of a pruned forward vs the plain model: Probe Pruning at 20/30/40%, Wanda-sp at 40%.

One process, one batch (default 8 × 256 tokens, no padding), a forward with ``logits_to_keep=1``
(a prefill: the LM head, which no method prunes, runs for the last position only). Each row is
the median of ``--repeats`` timed forwards after two warm-up rounds; the configurations take turns
(one forward each per round), so a shared machine's drift hits them alike. "dense" is the plain model,
no patched forward; "patched 0%" is the pruned forward keeping everything (the patching's own
overhead). "FLOPs saved" is counted by the pruned forwards (probes included) on the same input:
1 − performed / dense MACs of the decoder blocks; "probe" is the probes' share of the dense MACs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pruning_speed.py [--model smollm2-135m] [--batch 8] [--length 256]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tunelab.inspect.hooks import geometry
from tunelab.inspect.pruning import (
    ProbePruning,
    StaticPlan,
    WandaSP,
    activation_stats,
    pruned,
)
from tunelab.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def calibration_texts(limit: int = 32) -> list[str]:
    """Paragraphs of the repository's own docs: offline, real English, enough for the EMA."""
    texts: list[str] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if path.is_file():
            texts += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 200]
    return texts[:limit]


def timed_forward(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Milliseconds of one forward over ``ids``."""
    with torch.inference_mode():
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    model.eval()
    ids = torch.randint(100, len(tokenizer), (args.batch, args.length))
    tokens = args.batch * args.length
    stats = activation_stats(model, tokenizer, calibration_texts(), batch_size=8, max_length=256)
    print(f"{args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} × {args.length} tokens, median of {args.repeats}")

    layers = geometry(model).n_layers
    configs: list[tuple[str, Any]] = [("dense (plain model)", None)]
    configs += [("patched, nothing pruned", StaticPlan(heads={i: [] for i in range(layers)}))]
    configs += [(f"probe pruning {r:.0%}", ProbePruning(r, skip=args.skip).use_stats(stats)) for r in (0.2, 0.3, 0.4)]
    configs += [("wanda-sp 40%", WandaSP(0.4, skip=args.skip).use_stats(stats))]
    times: dict[str, list[float]] = {name: [] for name, _ in configs}
    counts: dict[str, Any] = {}
    # Interleaved rounds (every configuration once per round) so drift on a shared machine hits all alike.
    for round_ in range(2 + args.repeats):
        for name, pruner in configs:
            if pruner is None:
                ms = timed_forward(model, ids)  # the plain model: no patched forward anywhere
            else:
                with pruned(model, pruner) as run:
                    ms = timed_forward(model, ids)
                counts[name] = run
            if round_ >= 2:
                times[name].append(ms)
    dense_ms = statistics.median(times[configs[0][0]])
    dense_gmac = next(iter(counts.values())).dense_macs / 1e9

    print(f"decoder blocks: {dense_gmac:.1f} GMAC per dense forward (LM head excluded)")
    print(f"{'method':26s} {'ms':>8s} {'us/token':>9s} {'time / dense':>12s} {'FLOPs saved':>11s} {'probe':>6s}")
    for name, _ in configs:
        ms = statistics.median(times[name])
        run = counts.get(name)
        saved, probe = (run.saved, run.probe_macs / run.dense_macs) if run is not None else (0.0, 0.0)
        print(f"{name:26s} {ms:8.1f} {ms * 1000 / tokens:9.1f} {ms / dense_ms:12.2f} {saved:11.1%} {probe:6.1%}")


if __name__ == "__main__":
    main()
