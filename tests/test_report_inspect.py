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
    assert "degenerate" not in text  # rows from before the guard: no degenerate column


def test_no_inspect_results_no_sections(tmp_path: Path) -> None:
    from tests.test_report import fake_run

    fake_run(tmp_path / "runs" / "plain", "lora", 1000, 4000)
    ids = section_ids(render_report([tmp_path / "runs"]))
    assert "heads" not in ids and "pruning" not in ids


def multiturn_metrics(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "kind": "multi-turn", "name": "multi-turn", "task": "arc-easy", "model": "smollm2-135m", "adapter": None, "n": 40,
        "turns": 3, "follow_up": "Think again.", "reword": False, "accuracy": [0.5, 0.45, 0.425],
        "accuracy_ci": [[0.35, 0.65], [0.3, 0.6], [0.275, 0.575]], "markov_prediction": [0.5, 0.46, 0.44],
        "p_tf": 0.2, "p_tf_ci": [0.1, 0.3], "p_ft": 0.12, "p_ft_ci": [0.05, 0.2], "acc_inf": 0.375, "acc_inf_ci": [0.2, 0.55],
        "acc_inf_reason": None, "change_rate": [0.3, 0.25], "probe": {"0": 0.61, "3": 0.74, "5": None},
        "baseline_auroc": 0.65, "probe_reason": None,
        "transitions": {"per_turn": [], "pooled": {"TT": 30, "TF": 8, "FT": 5, "FF": 37}}}))
    return d


def test_multiturn_section(tmp_path: Path) -> None:
    multiturn_metrics(tmp_path / "inspect" / "multiturn-arc-easy")
    page = render_report([tmp_path / "inspect"])
    assert "multi-turn" in section_ids(page) and "other" not in section_ids(page)
    assert_self_contained(page)
    text = visible(page)
    for value in ("Multi-turn stability", "Think again.", "45.0% [30.0%, 60.0%]", "46.0%", "Acc∞ = p_FT / (p_TF + p_FT) = 37.5% [20.0%, 55.0%]",
                  "p_TF 20.0% [10.0%, 30.0%]", "layer 3", "0.740", "turn index only (baseline)", "0.650"):
        assert value in text, value
    assert text.count("<img") == 0 and page.count("<img") == 2  # measured vs Markov, AUROC by layer


def test_steering_section(tmp_path: Path) -> None:
    d = tmp_path / "vec"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({
        "kind": "steering", "name": "steering", "model": "tiny-random", "method": "mean-diff", "n": 24,
        "separation": {"0": 0.6, "1": 0.95, "2": 0.8}, "norms": {"0": 0.5, "1": 3.0, "2": 12.0},
        "series": {"held-out AUROC": {"x": [0, 1, 2], "y": [0.6, 0.95, 0.8]}}, "title": "contrast-pair separation per layer",
        "xlabel": "layer", "ylabel": "held-out AUROC"}))
    page = render_report([tmp_path])
    assert "steering" in section_ids(page)
    assert_self_contained(page)
    text = visible(page)
    for value in ("Steering vectors", "mean-diff", "1 (0.950), 2 (0.800), 0 (0.600)", "0.5–12", "contrast-pair separation per layer"):
        assert value in text or value in page, value


def test_refusal_direction_section(tmp_path: Path) -> None:
    d = tmp_path / "safe-s" / "inspect" / "refusal-direction"
    d.mkdir(parents=True)
    cands = [{"position": p, "token": t, "layer": layer, "norm": 1.0 + layer, "refusal_score": -1.0 - layer + p,
              "steering_score": 0.5, "kl": 0.01 * layer, "passed": layer < 2, "filtered_by": [] if layer < 2 else ["depth"]}
             for p, t in ((-2, "assistant"), (-1, "\n")) for layer in (1, 2)]
    rows = [{"intervention": name, "asr": asr, "refusal_rate": 1 - asr, "over_refusal": over, "ce": ce, "ppl": 2.718 ** ce}
            for name, asr, over, ce in (("baseline", 0.03, 0.12, 2.91), ("ablation", 0.84, 0.0, 2.95),
                                        ("addition", 0.0, 0.97, 3.4), ("orthogonalized", 0.81, 0.03, 2.96))]
    (d / "metrics.json").write_text(json.dumps({
        "kind": "refusal-direction", "name": "refusal-direction", "model": "smollm2-135m", "adapter": "runs/safe-s", "n_layers": 30,
        "selected": {"position": -2, "token": "assistant", "layer": 1, "norm": 2.0,
                     "scores": {"refusal_score": -4.25, "steering_score": 0.5, "kl": 0.01}},
        "filters_passed": True, "filter_reason": None, "n_passed": 2, "candidates": cands,
        "refusal_tokens": {"source": "derived", "tokens": ["I", "\n"]}, "baseline": {"harmful_refusal_score": 3.5}, "rows": rows}))
    page = render_report([tmp_path / "safe-s"])
    assert "refusal-direction" in section_ids(page) and "other" not in section_ids(page)
    assert_self_contained(page)
    text = visible(page)
    for value in ("Refusal direction", "position -2 (‘assistant’), layer 1 of 30", "ablated refusal score -4.25 (baseline 3.5)",
                  "passes the filters", "Refusal tokens: ‘I’, ‘\\n’", "orthogonalized", "84.0%", "97.0%", "2.91", "over-refusal (benign)"):
        assert value in text, value
    assert page.count("<img") == 1  # the candidates' heatmap
    assert "degenerate" not in text and "Judge: keyword." in text  # written before the guard: its old columns


def test_refusal_direction_section_with_the_guard(tmp_path: Path) -> None:
    d = tmp_path / "rd"
    d.mkdir()
    rows = [{"intervention": "ablation", "asr": 0.0, "asr_fluent": 0.0, "degenerate_rate": 0.875, "refusal_rate": 0.125,
             "over_refusal": 0.0, "ce": 12.5, "judge": "embedding"}]
    (d / "metrics.json").write_text(json.dumps({"kind": "refusal-direction", "name": "refusal-direction", "model": "m",
                                                "selected": {}, "rows": rows}))
    text = visible(render_report([d]))
    for value in ("ASR (fluent answers)", "degenerate (harmful)", "87.5%", "12.5%", "Judge: embedding with the degenerate-text guard"):
        assert value in text, value
    assert "likelihood test" not in text  # rows without a guard_reference: the test did not run


def test_pruning_section_with_the_guard(tmp_path: Path) -> None:
    d = tmp_path / "prune"
    d.mkdir()
    rows = [{"method": "pp", "ratio": 0.4, "flops_saved": 0.3, "ppl": 40.0, "refusal_rate": 0.25, "over_refusal": 0.0,
             "degenerate_rate": 0.625, "judge": "embedding", "guard_reference": "dense model"}]
    (d / "metrics.json").write_text(json.dumps({"kind": "pruning", "task": None, "model": "m", "rows": rows}))
    text = visible(render_report([d]))
    assert "degenerate (harmful)" in text and "62.5%" in text and "Judge: embedding" in text
    assert "its likelihood test under the dense model" in text


def salt_metrics(d: Path) -> Path:
    d.mkdir(parents=True)
    rows = [{"coeff": c, "positions": p, "n": 64, "leak_rate": lk, "leak_ci": [max(0, lk - 0.1), min(1, lk + 0.1)], "accuracy": acc,
             "accuracy_ci": [acc - 0.1, min(1, acc + 0.05)], "leak_reduction": None if c == 0 else (0.3 - lk) / 0.3}
            for c, p, lk, acc in ((0.0, "last", 0.3, 0.9), (1.0, "last", 0.2, 0.88), (2.0, "last", 0.125, 0.8), (2.0, "all", 0.05, 0.4))]
    (d / "metrics.json").write_text(json.dumps({"kind": "salt", "name": "salt", "model": "smollm2-135m", "adapter": None,
                                                "n_train": 64, "n_test": 64, "layers": [16, 17, 21],
                                                "layer_source": "top 3 late layers by separation", "read": "last",
                                                "pairs": "template", "rows": rows, "baseline_leak": 0.3}))
    return d


def test_salt_section(tmp_path: Path) -> None:
    salt_metrics(tmp_path / "inspect" / "salt")
    page = render_report([tmp_path / "inspect"])
    assert "salt" in section_ids(page) and "other" not in section_ids(page)
    assert_self_contained(page)
    text = visible(page)
    for value in ("Privacy steering (SALT)", "Steered layers 16, 17, 21", "leak rate [95% CI]", "12.5% [2.5–22.5]", "+58%",
                  "task accuracy [95% CI]", "Baseline leak rate 30.0%", "leak rate and accuracy vs steering coefficient"):
        assert value in text or value in page, value
