"""`tunelab report`: the "Privacy audit" section for metrics.json of kind "privacy-audit"."""

from __future__ import annotations

import builtins
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.test_report import assert_self_contained, fake_run, section_ids, visible, write_json
from tunelab.privacy.report import privacy_section
from tunelab.report import render_report
from tunelab.report.collect import collect
from tunelab.report.plots import Palette
from tunelab.report.sections import SECTIONS

SECRET = "zq-SECRET-canary-7731"  # written to a canaries file beside the audit; must never reach the page


def tpr_rows(n_out: int, tprs: dict[float, tuple[float, list[float]]]) -> list[dict[str, Any]]:
    """``tpr_at_fpr`` as the audit writes it: refused where n_out < 1/fpr."""
    rows = []
    for fpr in (0.001, 0.01, 0.1):
        need = round(1 / fpr)
        if n_out < need:
            rows.append({"fpr": fpr, "tpr": None, "ci": None,
                         "refused": f"{n_out} non-members: FPR {fpr:g} allows fewer than one false positive (needs >= {need})"})
        else:
            tpr, ci = tprs[fpr]
            rows.append({"fpr": fpr, "tpr": tpr, "ci": ci, "refused": None})
    return rows


def score(n_in: int, n_out: int, tprs: dict[float, tuple[float, list[float]]], auroc: tuple[float, list[float]],
          eps: float, ceiling: float, warning: str | None = None) -> dict[str, Any]:
    t1, t10 = tprs[0.01][0], tprs[0.1][0]  # a step ROC through the TPR@1% and @10% points
    return {"n_members": n_in, "n_non_members": n_out, "m": n_in + n_out, "tpr_at_fpr": tpr_rows(n_out, tprs),
            "auroc": {"value": auroc[0], "ci": auroc[1]}, "epsilon_lb": eps, "epsilon_ceiling": ceiling,
            "epsilon": {"epsilon": eps, "ceiling": ceiling, "threshold_strategy": "bonferroni (hull, K=12)", "n_guesses": 40},
            "delta": 1e-05, "significance": 0.05, "threshold_strategy": "bonferroni", "warning": warning,
            "bootstrap": {"num_samples": 1000, "confidence": 0.95, "seed": 0},
            "roc": {"fpr": [0.0, 0.0, 0.002, 0.01, 0.1, 0.5, 1.0], "tpr": [0.0, t1 / 4, t1 / 2, t1, t10, (1 + t10) / 2, 1.0]}}


def audit(d: Path, family: str, n_in: int, n_out: int, scores: dict[str, Any], headline: str, adapter: str | None = None) -> None:
    """A privacy-audit metrics.json (and, beside it, a canaries file holding a secret)."""
    head = scores[headline]
    write_json(d / "metrics.json", {
        "kind": "privacy-audit", "subject": adapter or str(d), "model": "smollm2-135m", "adapter": adapter,
        "canaries": {"family": family, "m": n_in + n_out, "members": n_in, "non_members": n_out, "secret_len": 8, "prefix_style": "random"},
        "delta": 1e-05, "significance": 0.05, "threshold_strategy": "bonferroni", "fprs": [0.001, 0.01, 0.1],
        "headline_score": headline, "epsilon_lb": head["epsilon_lb"], "epsilon_ceiling": head["epsilon_ceiling"],
        "tpr_at_1pct_fpr": head["tpr_at_fpr"][1]["tpr"], "auroc": head["auroc"]["value"], "scores": scores, "seconds": 12.3})
    (d / "canaries.jsonl").write_text(json.dumps({"prefix": "p", "secret": SECRET, "member": True}) + "\n")


@pytest.fixture
def audits(tmp_path: Path) -> Path:
    """A run with a bigram audit (503/497: TPR@0.1% refused) and a standalone unigram audit (1000/1000)."""
    root = tmp_path / "runs"
    run = fake_run(root / "lora-canaries", "lora", 1_234_567, 19_593_064)
    audit(run / "eval" / "privacy", "bigram", 503, 497, headline="secret_loss", scores={
        "secret_loss": score(503, 497, {0.01: (0.12, [0.05, 0.2]), 0.1: (0.4, [0.3, 0.5])}, (0.71, [0.68, 0.74]), 1.23, 4.41,
                             warning="503 members vs 497 non-members: imbalance alone can give ε_LB > 0"),
        "sequence_loss": score(503, 497, {0.01: (0.034, [0.01, 0.06]), 0.1: (0.25, [0.2, 0.31])}, (0.615, [0.58, 0.65]), 0.41, 4.41),
    }, adapter=str(run))
    audit(root / "audit-unigram", "unigram", 1000, 1000, headline="sequence_loss", adapter="/elsewhere/lora-unigram", scores={
        "sequence_loss": score(1000, 1000, {0.001: (0.021, [0.004, 0.05]), 0.01: (0.3, [0.25, 0.35]), 0.1: (0.77, [0.7, 0.8])},
                               (0.93, [0.91, 0.95]), 5.02, 5.3),
        "secret_loss": score(1000, 1000, {0.001: (0.0, [0.0, 0.01]), 0.01: (0.1, [0.05, 0.15]), 0.1: (0.5, [0.45, 0.55])},
                             (0.8, [0.78, 0.82]), 2.0, 5.3),
    })
    return root


def privacy_html(page: str) -> str:
    match = re.search(r'<section id="privacy">(.*?)</section>', page, re.DOTALL)
    assert match, "no privacy section"
    return match.group(1)


def rows_of(section: str) -> list[str]:
    """Each table row's cells as text (tags removed)."""
    return [re.sub(r"<[^>]+>", "", row) for row in re.findall(r"<tr>(.*?)</tr>", section, re.DOTALL)]


def test_privacy_section(audits: Path):
    page = render_report([audits])
    assert_self_contained(page)
    assert "privacy" in section_ids(page) and "other" not in section_ids(page)
    assert "kind: privacy-audit" not in page  # claimed, so not in "Other evaluations"
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids.index("privacy") > ids.index("runs")
    section = privacy_html(page)
    text = visible(section)
    assert text.count("<figure>") == 3 and len(re.findall(r"<img ", section)) == 3  # ROC bigram, ROC unigram, ε bars
    assert "ROC, bigram canaries" in text and "ROC, unigram canaries" in text and "ε_LB vs ceiling (headline scores)" in text

    rows = rows_of(text)
    header = rows[0]
    for col in ("TPR@0.1% FPR", "TPR@1% FPR", "TPR@10% FPR", "AUROC", "ε_LB (ceiling)"):
        assert col in header, col
    assert "threshold" not in header and "Threshold strategy: bonferroni (hull, K=12)" in text  # one strategy: caption
    body = rows[1:]
    assert len(body) == 4  # one per (audit, score)
    # headline first within each audit, marked with a star
    assert body[0].startswith("lora-canaries") and "bigram" in body[0] and "secret_loss ★" in body[0]
    assert "sequence_loss" in body[1] and "★" not in body[1]
    assert body[2].startswith("lora-unigram") and "unigram" in body[2] and "sequence_loss ★" in body[2]
    for value in ("1,000 (503 / 497)", "–1", "12.0% [5.0–20.0]", "40.0% [30.0–50.0]", "0.710 [0.680–0.740]", "1.23 (4.41)"):
        assert value in body[0], (value, body[0])
    for value in ("2,000 (1,000 / 1,000)", "2.1% [0.4–5.0]", "30.0% [25.0–35.0]", "77.0% [70.0–80.0]", "0.930 [0.910–0.950]",
                  "5.02", "(at ceiling)", "5.3"):
        assert value in body[2], (value, body[2])
    assert "0.0% [0.0–1.0]" in body[3] and "(at ceiling)" not in body[3]
    # refused cells: a dash with the reason as tooltip and as a footnote
    assert len(re.findall(r'<span title="497 non-members: FPR 0.001 allows fewer than one false positive[^"]*">–<sup>1</sup>', section)) == 2
    assert "<sup>1</sup> 497 non-members: FPR 0.001 allows fewer than one false positive (needs &gt;= 1000)" in section
    assert "δ = 1e-05" in text and "significance 0.05" in text and "Steinke" in text and "95% bootstrap CIs" in text
    assert "503 members vs 497 non-members: imbalance alone" in text  # the warning, once
    assert text.count("imbalance alone") == 1
    assert "drawn at 0.001" in text  # log axes: zeros clipped, and the caption says so


def test_privacy_section_reads_no_canaries(audits: Path, monkeypatch: pytest.MonkeyPatch):
    data = collect([audits])
    opened: list[str] = []
    real_open = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)  # pathlib's read_text goes through io.open
    html = privacy_section(data, Palette())
    monkeypatch.undo()
    assert html and "lora-canaries" in html
    assert not [f for f in opened if str(audits) in f]  # matplotlib may open fonts; nothing under the runs
    assert SECRET not in render_report([audits])


def test_privacy_malformed_files_do_not_break_the_report(tmp_path: Path):
    bad = tmp_path / "audits"
    write_json(bad / "empty-scores" / "metrics.json", {"kind": "privacy-audit", "scores": {}})
    write_json(bad / "no-scores" / "metrics.json", {"kind": "privacy-audit", "epsilon_lb": 1.0})
    write_json(bad / "junk-scores" / "metrics.json", {"kind": "privacy-audit", "scores": ["nope"]})
    write_json(bad / "junk-values" / "metrics.json", {
        "kind": "privacy-audit", "canaries": "bigram", "headline_score": 7, "delta": "tiny", "fprs": "all",
        "scores": {"a": {"tpr_at_fpr": "x", "auroc": "high", "epsilon": [1], "roc": {"fpr": [0, "x", 0.5], "tpr": [0.1]}},
                   "b": {"tpr_at_fpr": [None, {"fpr": "0.01"}, {"fpr": 0.01, "tpr": "0.3", "ci": [1]}, {"fpr": 0.1, "tpr": 0.5, "ci": "?"}],
                         "auroc": {"value": float("nan"), "ci": [None, 1]}, "epsilon_lb": float("inf"), "epsilon_ceiling": None,
                         "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.9, 1.0]}, "warning": 3},
                   "c": None}})
    write_json(bad / "only-kind" / "metrics.json", {"kind": "privacy-audit"})
    page = render_report([bad])
    assert "section-error" not in page
    section = privacy_html(page)
    assert "Skipped (no attack scores in metrics.json)" in section
    for name in ("empty-scores", "no-scores", "junk-scores", "only-kind"):
        assert name in section, name
    assert "50.0%" in visible(section)  # the one well-formed TPR still shows
    assert "kind: privacy-audit" not in page


def test_privacy_section_is_registered_once():
    keys = [s.key for s in SECTIONS]
    assert keys.count("privacy") == 1 and keys.index("privacy") == keys.index("judges") + 1 == keys.index("safety") + 2
    assert [s.kinds for s in SECTIONS if s.key == "privacy"] == [("privacy-audit",)]
