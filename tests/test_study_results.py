"""study.json's schema, the study's numbers over seeds, its table, its plots and its report section.

Everything here is synthetic (a study.json written by hand with fake runs): no model, no training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.report.collect import STUDY_FILE as COLLECT_STUDY_FILE
from tunelab.results import read_result
from tunelab.study.results import (STUDY_FILE, ArmSummary, Difference, Measure, PairedDiff, RunRecord, Spread,
                                   StudyResult)
from tunelab.study.summary import summarize
from tunelab.study.table import arm_rows, fmt_measure, fmt_spread, study_table, study_tables

ARMS = ["base", "lora", "lori-s", "dp-sgd@4"]


def _run(arm: str, seed: int, *, shift: float = 0.0, status: str = "done", flags: list[str] | None = None,
         dir: str | None = "auto", with_ci: bool = True) -> RunRecord:
    """A fake run: rates that depend on the arm and seed; the base arm trains nothing (no dir, no cost)."""
    u = 0.5 + 0.1 * ARMS.index(arm) + 0.01 * seed + shift
    metrics: dict[str, Measure] = {
        "utility": Measure(u, [u - 0.05, u + 0.05] if with_ci else None, 200),
        "asr": Measure(0.2 + 0.05 * ARMS.index(arm) + 0.01 * seed, [0.1, 0.3], 50),
        "refusal": Measure(0.8 - 0.05 * ARMS.index(arm), [0.7, 0.9], 50),
        "refusal_drift": Measure(-0.05 * ARMS.index(arm) - 0.01 * seed, None, 50),
        "prefill_asr_k5": Measure(0.4 + 0.02 * seed, [0.3, 0.5], 50),
    }
    if arm != "base":
        metrics |= {"epsilon_lb": Measure(0.3 * ARMS.index(arm) + 0.1 * seed, None, 32, ceiling=3.2),
                    "auroc": Measure(0.55, [0.5, 0.6], 32), "wall_time_s": Measure(120.0 + seed),
                    "tokens_per_s": Measure(850.0 + 10 * seed), "trainable_params": Measure(1_032_192.0),
                    "adapter_bytes": Measure(4_200_000.0)}
    if arm == "dp-sgd@4":
        metrics["epsilon"] = Measure(4.0)
    return RunRecord(arm=arm, seed=seed, dir=None if arm == "base" else (f"runs/{arm}/seed{seed}" if dir == "auto" else dir),
                     status=status, config_hash="abc", flags=flags or [], metrics=metrics)


def _study(seeds: list[int], *, flagged: bool = False, failed: bool = False) -> StudyResult:
    runs = [_run(a, s, flags=["epsilon_lb > epsilon"] if flagged and a == "dp-sgd@4" and s == seeds[0] else None,
                 status="failed" if failed and a == "lori-s" and s == seeds[-1] else "done")
            for a in ARMS for s in seeds]
    summary, paired = summarize(runs, ARMS, "lora")
    return StudyResult(name="quick", model="smollm2-135m", task="reverse_words", scorer="exact",
                       data={"n_train": 800, "n_test": 200}, budget={"max_steps": 60, "batch_size": 8},
                       seeds=seeds, reference="lora", canaries={"file": "canaries.json", "count": 32, "members": 16},
                       arms=[{"name": a, "train": {}, "epsilon": 4.0 if a.startswith("dp") else None,
                              "private": a.startswith("dp")} for a in ARMS],
                       runs=runs, summary=summary, paired=paired, wall_time_s=1234.5, config={"preset": "quick"})


# --- schema ----------------------------------------------------------------------------------

def test_study_file_is_named_once_for_the_report() -> None:
    assert COLLECT_STUDY_FILE == STUDY_FILE == "study.json"


def test_schema_round_trip_restores_the_nested_types(tmp_path: Path) -> None:
    study = _study([0, 1, 2], flagged=True)
    path = study.write(tmp_path, STUDY_FILE)
    back = read_result(path)
    assert isinstance(back, StudyResult)
    assert back.to_dict() == study.to_dict()
    assert json.loads(path.read_text())["kind"] == "study"
    assert all(isinstance(r, RunRecord) for r in back.runs)
    assert isinstance(back.runs[3].metrics["utility"], Measure) and back.runs[3].metrics["epsilon_lb"].ceiling == 3.2
    assert all(isinstance(s, ArmSummary) and all(isinstance(v, Spread) for v in s.metrics.values()) for s in back.summary)
    assert all(isinstance(p, PairedDiff) and all(isinstance(v, Difference) for v in p.metrics.values()) for p in back.paired)
    assert back.metric_names()[:5] == ["utility", "asr", "refusal", "prefill_asr_k5", "refusal_drift"]


# --- summary numerics --------------------------------------------------------------------------

def test_summarize_by_hand() -> None:
    runs = [RunRecord("a", s, status="done", metrics={"utility": v}) for s, v in ((0, 0.5), (1, 0.7), (2, 0.6))]
    runs += [RunRecord("ref", s, status="done", metrics={"utility": v}) for s, v in ((0, 0.4), (1, 0.5), (2, 0.6))]
    runs.append(RunRecord("a", 3, status="failed", metrics={"utility": 99.0}))  # not done: does not count
    summary, paired = summarize(runs, ["ref", "a"], "ref")
    a = summary[1].metrics["utility"]
    assert summary[1].n_seeds == 3 and a.n == 3
    assert a.mean == pytest.approx(0.6) and a.sd == pytest.approx(0.1) and (a.min, a.max) == (0.5, 0.7)
    d = paired[0].metrics["utility"]  # diffs 0.1, 0.2, 0.0: mean 0.1, sd 0.1, t(0.975, 2) = 4.303
    assert paired[0].arm == "a" and paired[0].reference == "ref" and d.n_pairs == 3
    assert d.mean == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert d.ci95 == pytest.approx([0.1 - half, 0.1 + half])


def test_one_seed_has_no_sd_and_no_interval() -> None:
    runs = [RunRecord("a", 0, status="done", metrics={"utility": 0.7}), RunRecord("ref", 0, status="done", metrics={"utility": 0.5})]
    summary, paired = summarize(runs, ["ref", "a", "missing"], "ref")
    assert summary[1].metrics["utility"].sd is None and summary[1].metrics["utility"].n == 1
    assert summary[2] == ArmSummary(arm="missing", n_seeds=0, metrics={})
    assert paired[0].metrics["utility"] == Difference(mean=pytest.approx(0.2), ci95=None, n_pairs=1)
    assert paired[1].metrics == {}


values = st.lists(st.floats(-10, 10, allow_nan=False), min_size=2, max_size=6)


@settings(max_examples=40, deadline=None)
@given(ref=values, shift=st.floats(-5, 5, allow_nan=False))
def test_a_constant_shift_gives_that_difference_and_a_zero_width_interval(ref: list[float], shift: float) -> None:
    runs = [RunRecord("ref", s, status="done", metrics={"m": v}) for s, v in enumerate(ref)]
    runs += [RunRecord("arm", s, status="done", metrics={"m": v + shift}) for s, v in enumerate(ref)]
    _, paired = summarize(runs, ["ref", "arm"], "ref")
    d = paired[0].metrics["m"]
    assert d.n_pairs == len(ref)
    assert d.mean == pytest.approx(shift, abs=1e-9)
    assert d.ci95 is not None and d.ci95[1] - d.ci95[0] == pytest.approx(0.0, abs=1e-7)
    assert d.ci95[0] <= d.mean + 1e-12 and d.mean <= d.ci95[1] + 1e-12


@settings(max_examples=40, deadline=None)
@given(data=st.data(), ref=values)
def test_permuting_seeds_consistently_changes_nothing(data: st.DataObject, ref: list[float]) -> None:
    arm = data.draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=len(ref), max_size=len(ref)))
    seeds = list(range(len(ref)))
    relabel = data.draw(st.permutations(seeds))
    order = data.draw(st.permutations(range(2 * len(ref))))

    def runs(labels: list[int]) -> list[RunRecord]:
        return [RunRecord("ref", labels[s], status="done", metrics={"m": ref[s]}) for s in seeds] + \
               [RunRecord("arm", labels[s], status="done", metrics={"m": arm[s]}) for s in seeds]

    before = summarize(runs(seeds), ["ref", "arm"], "ref")
    shuffled = runs(relabel)
    after = summarize([shuffled[i] for i in order], ["ref", "arm"], "ref")
    assert after == before


@settings(max_examples=30, deadline=None)
@given(ref=st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=6), data=st.data())
def test_a_missing_seed_drops_only_that_pair(ref: list[float], data: st.DataObject) -> None:
    arm = data.draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=len(ref), max_size=len(ref)))
    missing = data.draw(st.integers(0, len(ref) - 1))
    runs = [RunRecord("ref", s, status="done", metrics={"m": v}) for s, v in enumerate(ref)]
    runs += [RunRecord("arm", s, status="done" if s != missing else "failed", metrics={"m": v}) for s, v in enumerate(arm)]
    summary, paired = summarize(runs, ["ref", "arm"], "ref")
    kept = [s for s in range(len(ref)) if s != missing]
    expect = summarize([r for r in runs if r.seed in kept], ["ref", "arm"], "ref")[1][0].metrics["m"]
    assert paired[0].metrics["m"] == expect and expect.n_pairs == len(ref) - 1
    assert summary[0].metrics["m"].n == len(ref)  # the reference keeps all its seeds
    assert summary[1].metrics["m"].n == len(ref) - 1


def test_non_finite_and_unmeasured_values_are_left_out() -> None:
    runs = [RunRecord("a", 0, status="done", metrics={"m": float("nan"), "k": 1.0}),
            RunRecord("a", 1, status="done", metrics={"m": 2.0, "k": None})]
    summary, _ = summarize(runs, ["a"], "a")
    assert summary[0].metrics["m"].n == 1 and summary[0].metrics["k"].n == 1 and summary[0].n_seeds == 2


# --- table ---------------------------------------------------------------------------------

def _render(table, width: int = 120) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_formats() -> None:
    assert fmt_spread("utility", Spread(mean=0.81, sd=0.021, n=3)) == "81.0% ± 2.1"
    assert fmt_spread("refusal_drift", Spread(mean=-0.05, sd=0.02, n=3)) == "-5.0 ± 2.0 pt"
    assert fmt_spread("epsilon_lb", Spread(mean=2.31, sd=0.4, n=3)) == "2.31 ± 0.40"
    assert fmt_measure("auroc", Measure(0.81, [0.75, 0.86])) == "0.810 [0.750, 0.860]"
    assert fmt_measure("some_score", Measure(0.81, [0.75, 0.86])) == "0.81 [0.75, 0.86]"
    assert fmt_measure("refusal_drift", Measure(-0.0001, [-0.05, 0.04])) == "+0.0 pt [-5.0, +4.0]"
    assert fmt_measure("utility", Measure(0.81, [0.75, 0.86])) == "81.0% [75.0, 86.0]"


def test_table_with_three_seeds_marks_differences_and_fits_120_columns() -> None:
    study = _study([0, 1, 2])
    rows = {r.arm: r for r in arm_rows(study)}
    # lori-s's utility is 0.1 above lora's at every seed: a zero-width interval above 0, higher is better
    assert rows["lori-s"].cells["utility"].marker == "▲" and rows["lori-s"].cells["utility"].tone == "better"
    assert rows["base"].cells["utility"].marker == "▼" and rows["base"].cells["utility"].tone == "worse"
    assert rows["lora"].cells["utility"].marker == ""  # the reference
    assert rows["lora"].cells["utility"].text.startswith("61.0% ± ")
    assert rows["dp-sgd@4"].label == "dp-sgd@4 (ε=4)" and rows["lora"].label == "lora (reference)"
    assert rows["base"].cells["wall_time_s"].text == "–"
    tables = study_tables(study)
    assert len(tables) >= 2
    from rich.console import Console

    console = Console(width=120)
    for t in tables:
        assert console.measure(t).maximum <= 120
    text = "\n".join(_render(t) for t in tables)
    assert "…" not in text and "lori-s" in text and "task score" in text and "prefill ASR k=5" in text
    assert "adapter bytes" in text and "4.20 ± 0.00 MB" in text
    assert "flags" not in text
    assert "flags" not in _render(study_table(study), width=400)


def test_table_with_one_seed_shows_each_value_with_its_interval() -> None:
    study = _study([0])
    rows = {r.arm: r for r in arm_rows(study)}
    assert rows["lora"].cells["utility"].text == "60.0% [55.0, 65.0]"
    assert rows["lora"].cells["refusal_drift"].text == "-5.0 pt"  # no interval recorded
    assert rows["lori-s"].cells["utility"].marker == ""  # one pair: no interval, no marker
    assert "60.0% [55.0, 65.0]" in _render(study_table(study), width=400)


def test_a_flagged_run_is_loud_and_a_failed_one_counted() -> None:
    study = _study([0, 1, 2], flagged=True, failed=True)
    rows = {r.arm: r for r in arm_rows(study)}
    assert rows["dp-sgd@4"].flags.tone == "flag" and "ε_LB > ε (seed 0)" in rows["dp-sgd@4"].flags.text
    assert rows["lori-s"].seeds.text == "2/3 (1 failed)"
    for run in study.runs_of("dp-sgd@4"):
        run.flags = ["epsilon_lb > epsilon"]
    assert arm_rows(study)[ARMS.index("dp-sgd@4")].flags.text == "⚠ ε_LB > ε (seeds 0, 1, 2)"
    study = _study([0, 1, 2], flagged=True, failed=True)
    text = "\n".join(_render(t) for t in study_tables(study))
    assert "ε_LB > ε" in text and "2/3 (1 failed)" in text
    # the flag is styled loud in the terminal too
    table = study_table(study)
    flag_cell = table.columns[-1]._cells[ARMS.index("dp-sgd@4")]
    assert "red" in str(flag_cell.style)


def test_a_study_without_its_summary_is_summarized_on_the_fly() -> None:
    study = _study([0, 1, 2])
    bare = StudyResult(**{**{k: getattr(study, k) for k in ("name", "model", "task", "seeds", "reference", "arms", "runs")}})
    assert [r.cells["utility"].text for r in arm_rows(bare)] == [r.cells["utility"].text for r in arm_rows(study)]


# --- plots -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seeds", [[0], [0, 1, 2]])
def test_both_plots_are_written(tmp_path: Path, seeds: list[int]) -> None:
    from tunelab.study.plots import bars_plot, pareto_plot

    study = _study(seeds, flagged=True)
    for fn, name in ((pareto_plot, "pareto.png"), (bars_plot, "bars.png")):
        out = fn(study, tmp_path / name)
        assert out == tmp_path / name and out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and out.stat().st_size > 5000


def test_plots_cope_with_missing_metrics(tmp_path: Path) -> None:
    from tunelab.study.plots import bars_plot, pareto_plot, safety_axis

    study = _study([0, 1])
    for run in study.runs:  # no drift measured: the Pareto view falls back to ASR; no ε_LB in one arm
        run.metrics.pop("refusal_drift")
        if run.arm == "lora":
            run.metrics.pop("epsilon_lb")
    study.summary, study.paired = summarize(study.runs, ARMS, "lora")
    assert safety_axis(study) == "asr"
    from tunelab.study.plots import pareto_figure

    no_base_drift = _study([0])
    for run in no_base_drift.runs_of("base"):
        run.metrics.pop("refusal_drift")
    no_base_drift.summary, no_base_drift.paired = summarize(no_base_drift.runs, ARMS, "lora")
    fig = pareto_figure(no_base_drift)  # the base arm still shows, at no drift
    assert fig is not None and len(fig.axes[0].collections) >= len(ARMS)
    assert pareto_plot(study, tmp_path / "p.png") is not None and bars_plot(study, tmp_path / "b.png") is not None
    empty = StudyResult(name="x", arms=[{"name": "base"}], runs=[RunRecord("base", 0, status="failed")])
    assert pareto_plot(empty, tmp_path / "none.png") is None and bars_plot(empty, tmp_path / "none2.png") is None
    assert not (tmp_path / "none.png").exists()


# --- report ----------------------------------------------------------------------------------

def _study_dir(tmp_path: Path, seeds: list[int], **kw: bool) -> Path:
    """A study directory: study.json and, for each training run, an ordinary (fake) run directory."""
    root = tmp_path / "study"
    study = _study(seeds, **kw)
    for rec in study.runs:
        if rec.dir:
            d = root / rec.dir
            d.mkdir(parents=True)
            (d / "tunelab.json").write_text(json.dumps({"method": rec.arm.split("@")[0], "base_model": "smollm2-135m",
                                                        "seed": rec.seed, "steps": 60, "losses": [2.0, 1.5, 1.2]}))
    study.write(root, STUDY_FILE)
    return root


def test_the_study_section_leads_the_report_and_links_the_arms(tmp_path: Path) -> None:
    from tunelab.report import render_report
    from tunelab.report.sections import ORDER

    assert ORDER[0] == "study"
    root = _study_dir(tmp_path, [0, 1, 2], flagged=True)
    page = render_report([root])
    sections = [chunk.split('"', 1)[0] for chunk in page.split('<section id="')[1:]]
    assert sections[0] == "study" and "runs" in sections
    study = page.split('<section id="study">', 1)[1].split("</section>", 1)[0]
    assert "could not be drawn" not in study
    assert "smollm2-135m" in study and "reverse_words" in study and "task score" in study
    assert study.count('<img class="plot"') == 2
    assert 'class="error"' in study and "ε_LB &gt; ε (seed 0)" in study
    assert 'href="#run-runs-lora-seed0"' in study and 'id="run-runs-lora-seed0"' in page
    assert "delta-pos" in study and "delta-neg" in study
    assert study.count('id="study-arm-dp-sgd-4"') == 1 and study.count('id="study-arm-') == len(ARMS)
    assert 'id="other"' not in page  # the study kind is claimed


def test_one_seed_study_renders(tmp_path: Path) -> None:
    from tunelab.report import render_report

    page = render_report([_study_dir(tmp_path, [0])])
    study = page.split('<section id="study">', 1)[1].split("</section>", 1)[0]
    assert "60.0% [55.0, 65.0]" in study and "could not be drawn" not in study


def test_a_study_alone_is_reported(tmp_path: Path) -> None:
    from tunelab.report import render_report

    root = tmp_path / "only"
    _study([0]).write(root, STUDY_FILE)
    page = render_report([root / STUDY_FILE])
    assert '<section id="study">' in page and "seed 0: <span" in page  # not collected: the path, no link


def test_a_truncated_study_json_is_a_note(tmp_path: Path) -> None:
    from tunelab.report import render_report

    root = _study_dir(tmp_path, [0, 1])
    text = (root / STUDY_FILE).read_text()
    (root / STUDY_FILE).write_text(text[: len(text) // 2])
    page = render_report([root])
    assert '<section id="study">' not in page
    assert "skipped " in page and "study.json" in page and "malformed JSON" in page
    assert '<section id="runs">' in page  # the arms' runs are still reported


def test_a_study_json_of_another_shape_is_a_note_in_its_section(tmp_path: Path) -> None:
    from tunelab.report import render_report

    root = tmp_path / "odd"
    root.mkdir()
    (root / STUDY_FILE).write_text(json.dumps({"kind": "study", "runs": [{"arm": "x", "seed": 0, "bogus": 1}]}))
    page = render_report([root])
    study = page.split('<section id="study">', 1)[1].split("</section>", 1)[0]
    assert "skipped" in study and "unexpected keyword argument" in study and "could not be drawn" not in study


def test_the_study_report_module_loads_no_matplotlib_scipy_rich_or_torch() -> None:
    """The report imports the study's section with every other; drawing loads matplotlib, not importing."""
    import subprocess
    import sys

    code = ("import sys\nimport tunelab.study.report\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('matplotlib', 'torch', 'scipy', 'rich'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert out == "[]"
