"""`tunelab report`: the "Attention heads" and "Pruning" sections."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_report import assert_self_contained, section_ids, visible
from tunelab.report import render_report


def heads_metrics(d: Path) -> Path:
    d.mkdir(parents=True)
    rows = [{"score": s, "fraction": f, "actual_pct": 100 * f, "accuracy": a, "accuracy_norm": a, "n": 50}
            for s, accs in (("random", (0.5, 0.42, 0.36)), ("mean_output_norm_ln", (0.5, 0.5, 0.47))) for f, a in zip((0.0, 0.1, 0.2), accs)]
    maps = {"mean_output_norm_ln": [[1.0, 0.4, 1.6], [0.9, 1.2, 0.9]]}
    (d / "metrics.json").write_text(json.dumps({
        "kind": "heads", "task": "arc-easy", "model": "tiny-random", "adapter": None, "n": 50, "chat_template": False,
        "baseline_accuracy": 0.5, "rows": rows, "largest_within": {"random": 0.0, "mean_output_norm_ln": 10.0},
        "mean_scores": maps, "static_mask": {"score": "mean_output_norm_ln", "fraction": 0.1, "file": "head_mask.safetensors",
                                            "mask": [[False, True, False], [False, False, False]]},
        "series": {s: {"x": [r["actual_pct"] for r in rows if r["score"] == s], "y": [r["accuracy"] for r in rows if r["score"] == s]}
                   for s in ("random", "mean_output_norm_ln")},
        "title": "accuracy vs % heads zeroed", "xlabel": "% heads zeroed", "ylabel": "accuracy"}))
    return d


def pruning_metrics(d: Path) -> Path:
    d.mkdir(parents=True)
    rows = [{"method": "dense", "ratio": 0.0, "flops_saved": 0.0, "ppl": 12.5, "accuracy": 0.5, "refusal_rate": 0.9, "over_refusal": 0.1}]
    rows += [{"method": m, "ratio": r, "flops_saved": r * 0.8, "ppl": 14.0 + 10 * r, "accuracy": 0.45, "refusal_rate": rr,
              "over_refusal": 0.1} for m, rr in (("pp", 0.5), ("aapp", 0.8)) for r in (0.2, 0.4)]
    (d / "metrics.json").write_text(json.dumps({"kind": "pruning", "task": "arc-easy", "model": "tiny-random", "adapter": "runs/safe-s",
                                                "rows": rows}))
    return d


def test_heads_and_pruning_sections(tmp_path: Path) -> None:
    heads_metrics(tmp_path / "inspect" / "heads")
    pruning_metrics(tmp_path / "inspect" / "prune")
    page = render_report([tmp_path / "inspect"])
    assert {"heads", "pruning"} <= set(section_ids(page))
    assert "other" not in section_ids(page)  # both kinds are claimed
    assert_self_contained(page)
    text = visible(page)
    for value in ("Attention heads", "largest % within 1 pt", "mean_output_norm_ln", "47.0% @ 20%", "Unablated accuracy 50.0%",
                  "Pruning", "FLOPs saved (counted)", "aapp", "refusal rate vs FLOPs saved", "mean mean_output_norm_ln per head"):
        assert value in text or value in page, value


def test_no_inspect_results_no_sections(tmp_path: Path) -> None:
    from tests.test_report import fake_run

    fake_run(tmp_path / "runs" / "plain", "lora", 1000, 4000)
    ids = section_ids(render_report([tmp_path / "runs"]))
    assert "heads" not in ids and "pruning" not in ids
