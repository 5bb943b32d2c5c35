"""The report's pre-training sections, from real (tiny) `tunelab pretrain` runs: a dense and a
Default MoE run from scratch, and a continued MoE run with replay."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.test_report import assert_self_contained, section_ids, visible
from tunelab.moe.pretrain import PretrainConfig, run_pretrain
from tunelab.report import build_report

TINY = dict(width=16, depth=2, experts=4, top_k=2, seq_len=16, batch_size=4, eval_batches=2, log_every=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretrain-report")
    text = root / "new.txt"
    text.write_text("".join(f"line {i}: the quick brown fox {i * 7 % 13} jumps\n" for i in range(200)))
    run_pretrain(PretrainConfig(arch="moe", router="default", corpus="pydoc", max_steps=4, eval_every=2,
                                output=str(root / "moe"), **TINY))
    run_pretrain(PretrainConfig(arch="dense", corpus="pydoc", max_steps=4, eval_every=2, output=str(root / "dense"),
                                **{k: v for k, v in TINY.items() if k not in ("experts",)}))
    run_pretrain(PretrainConfig(init_from=str(root / "moe"), data=str(text), replay="corpus:pydoc:0.25",
                                schedule="rewarm", max_steps=4, eval_every=2, output=str(root / "cpt"), seq_len=16,
                                batch_size=4, eval_batches=2))
    return root


def test_pretrain_sections(runs: Path) -> None:
    """All three sections appear, with each run's held-out loss as metrics.json has it; pretrain
    dirs are not mistaken for (unfinished) fine-tuning runs."""
    page = build_report([runs], runs / "report.html").read_text()
    assert_self_contained(page)
    assert {"pretrain", "moe-routing", "continual-pretraining"} <= section_ids(page)
    assert "unfinished" not in visible(page).lower()
    for name in ("moe", "dense", "cpt"):
        m = json.loads((runs / name / "metrics.json").read_text())
        for loss in m["final_loss"].values():
            assert f"{loss:.4g}" in visible(page)
    cpt = json.loads((runs / "cpt" / "metrics.json").read_text())
    assert set(cpt["final_loss"]) == {"new.txt", "pydoc"}
    body = visible(page).split('id="continual-pretraining"')[1]
    assert "pydoc (old)" in body and "new.txt (new)" in body
    change = cpt["final_loss"]["pydoc"] - cpt["initial_loss"]["pydoc"]
    assert f"{change:+.4f}" in body


def test_routing_section_lists_moe_runs_only(runs: Path) -> None:
    """The routing table has the MoE runs' MRI per layer, and no dense row."""
    page = visible(build_report([runs], runs / "report.html").read_text())
    body = page.split('id="moe-routing"')[1].split("<section")[0]
    moe = json.loads((runs / "moe" / "metrics.json").read_text())
    mri = " / ".join(f"{v:.2f}" for v in moe["routing"]["pydoc"]["eval"]["mri"])
    assert mri in body
    rows = re.search(r"<tbody>(.*?)</tbody>", body, re.DOTALL).group(1)
    assert "moe (MoE default)" in rows and "(dense)" not in rows
