"""``tunelab judge train`` and ``tunelab judge compare``: one config and one job each.

* train — builds the labelled data of :mod:`tunelab.safety.judge_data`, embeds it, fits a
  scikit-learn ``StandardScaler`` + ``LogisticRegression`` on the ``train`` set and writes a judge
  directory: ``head.safetensors``, ``judge_card.json``, ``README.md`` and ``metrics.json`` (last).
* compare — runs every judge on the same answers (a run's safety-eval records, or a JSONL file of
  ``prompt``, ``response`` and optional ``label``) and reports each judge's refusal rate, the
  pairwise agreement and Cohen's κ, accuracy where labels exist, and a few disagreeing answers
  (truncated, so neither secrets nor harmful text are copied out whole).
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.evaluate.judge_results import JudgeCompareResult, JudgeTrainResult
from tunelab.layout import EVAL_FILE, atomic_write_text
from tunelab.options import check_fields, comma_list, option
from tunelab.results import RunDir

SNIPPET = 80  # characters of a prompt or response a comparison shows
VERDICTS_FILE = "verdicts.jsonl"


def snippet(text: str, n: int = SNIPPET) -> str:
    """``text`` on one line, cut to ``n`` characters (an ellipsis marks the cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


# ---------------------------------------------------------------------------------------- train
@dataclass
class JudgeTrainConfig:
    """Everything ``tunelab judge train`` needs."""

    output: str = option("runs/judges/embedding", help="the judge directory to write")
    encoder: str = option("all-minilm-l6-v2", help="sentence encoder: all-minilm-l6-v2 (the installed package) or a local model dir")
    answers: str | None = option(None, show_default="tunelab's data/judge_benign_answers.jsonl",
                                 help="the model's answers to benign prompts (JSONL: prompt, response, source, category)")
    c: float = option(1.0, flag="--c", gt=0, help="inverse L2 strength of the logistic regression")
    threshold: float = option(0.5, gt=0, lt=1, help="score at or above which an answer counts as complied")
    max_length: int = option(256, min=8, help="encoder tokens per text (all-MiniLM-L6-v2 was trained at 256)")
    seed: int = option(0, help="seed of the data recipe (refusal choices, splits of DoNotAnswer, degenerate text)")
    overwrite: bool = option(False, help="replace an existing judge directory")

    def validate(self) -> None:
        check_fields(self)
        if self.answers is not None and not Path(self.answers).is_file():
            raise TunelabError(f"answers file not found: {self.answers}")

    def run_dir(self) -> RunDir:
        return RunDir(Path(self.output), marker=EVAL_FILE, what="a trained judge")


def _accuracy(labels: list[int], scores: list[float], threshold: float) -> float:
    return float(np.mean([(s >= threshold) == bool(y) for y, s in zip(labels, scores)])) if labels else float("nan")


def render_card(card: dict[str, Any]) -> str:
    """The model card as markdown (``README.md`` of a judge directory)."""
    acc = card["accuracy"]
    lines = [f"# Embedding refusal judge ({card['name']})", "",
             f"Logistic regression over {card['encoder']['name']} embeddings (features `{card['features']}`: the "
             "answer's embedding and its cosine with the prompt's). Score = P(complied); an answer counts as complied "
             f"when the score is ≥ {card['threshold']}.", "",
             f"- encoder: {card['encoder']['name']} (model.safetensors sha256 `{card['encoder']['sha256']}`, "
             f"max {card['encoder']['max_length']} tokens, mean pooling, L2-normalised)",
             f"- classifier: {card['classifier']['type']} (C = {card['classifier']['C']}, class_weight "
             f"{card['classifier']['class_weight']}) after StandardScaler; weights in `head.safetensors`",
             f"- tunelab {card['tunelab_version']}, data seed {card['seed']}", "",
             "## Data", "", card["recipe"], "",
             "| set | n | complied | refused | sources |", "|---|---:|---:|---:|---|"]
    for name, s in card["sizes"].items():
        sources = ", ".join(f"{k} {v}" for k, v in s["sources"].items())
        lines.append(f"| {name} | {s['n']} | {s['complied']} | {s['refused']} | {sources} |")
    lines += ["", "## Accuracy (threshold {})".format(card["threshold"]), "", "| set | n | embedding | keyword |",
              "|---|---:|---:|---:|"]
    for name, a in acc.items():
        lines.append(f"| {name} | {a['n']} | {a['embedding']:.3f} | {a['keyword']:.3f} |")
    lines += ["", "`train` is the fit's own data; the other sets are held out by source or category (see the recipe). "
              "Measured numbers and their reading: docs/judges.md.", ""]
    return "\n".join(lines)


def run_judge_train(cfg: JudgeTrainConfig, run_dir: RunDir | None = None) -> JudgeTrainResult:
    """The ``tunelab judge train`` job: build the recipe's data, fit the head, write the judge directory."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import tunelab
    from tunelab.safety import judge_data
    from tunelab.evaluate.embedding_judge import (CARD_FILE, CARD_MARKDOWN, FEATURES, HEAD_FILE, LogisticHead,
                                                  SentenceEncoder, features)
    from tunelab.evaluate.judges import KeywordJudge

    cfg.validate()
    run_dir = run_dir or cfg.run_dir()
    run_dir.prepare(overwrite=cfg.overwrite)
    started = time.perf_counter()
    examples = judge_data.build_judge_data(cfg.seed, cfg.answers or judge_data.BENIGN_ANSWERS)
    encoder = SentenceEncoder(cfg.encoder, max_length=cfg.max_length, dtype="float32")  # fp32: the same head on every CPU
    x = features(encoder, [e.prompt for e in examples], [e.response for e in examples])
    y = np.array([e.label for e in examples])
    train = np.array([e.set == "train" for e in examples])
    scaler = StandardScaler().fit(x[train])
    classifier = LogisticRegression(C=cfg.c, class_weight="balanced", max_iter=5000, random_state=cfg.seed)
    classifier.fit(scaler.transform(x[train]), y[train])
    head = LogisticHead.from_sklearn(scaler, classifier)
    probs = head.probability(x)
    empty = np.array([not e.response.strip() for e in examples])
    probs[empty] = 0.0  # as EmbeddingJudge.scores has it
    keyword = np.array(KeywordJudge().scores([e.prompt for e in examples], [e.response for e in examples]))
    accuracy = {}
    for name in judge_data.SETS:
        mask = np.array([e.set == name for e in examples])
        accuracy[name] = {"n": int(mask.sum()),
                          "embedding": _accuracy(list(y[mask]), list(probs[mask]), cfg.threshold),
                          "keyword": _accuracy(list(y[mask]), list(keyword[mask]), 0.5)}
    encoder_info = {"name": cfg.encoder, "sha256": encoder.sha256, "max_length": encoder.max_length,
                    "pooling": "mean", "normalize": encoder.normalize, "dim": encoder.dim, "dtype": encoder.dtype}
    card = {"name": Path(cfg.output).name, "tunelab_version": tunelab.__version__, "features": FEATURES,
            "encoder": encoder_info, "threshold": cfg.threshold, "seed": cfg.seed,
            "classifier": {"type": "LogisticRegression", "C": cfg.c, "class_weight": "balanced", "solver": classifier.solver,
                           "scaler": "StandardScaler"},
            "labels": {"1": "complied", "0": "refused or no usable answer"},
            "recipe": " ".join(judge_data.__doc__.split("\n\n", 1)[1].split()),
            "sizes": judge_data.sizes(examples), "accuracy": accuracy}
    head.save(run_dir.file(HEAD_FILE), {"features": FEATURES, "encoder": cfg.encoder, "encoder_sha256": encoder.sha256})
    run_dir.write_text(CARD_FILE, json.dumps(card, indent=2) + "\n")
    run_dir.write_text(CARD_MARKDOWN, render_card(card))
    result = JudgeTrainResult(judge_dir=str(run_dir.path), encoder=encoder_info, threshold=cfg.threshold,
                              sizes=card["sizes"], accuracy=accuracy, wall_time_s=time.perf_counter() - started,
                              config=asdict(cfg))
    result.write(run_dir)
    return result


# -------------------------------------------------------------------------------------- compare
@dataclass
class JudgeCompareConfig:
    """Everything ``tunelab judge compare`` needs."""

    answers: str | None = option(None, flag="-", metavar="RUN_OR_ANSWERS",
                                 help="a run or eval directory (its safety-eval outputs.jsonl) or a JSONL file of prompt, response[, label]")
    judges: list[str] = option(default_factory=lambda: ["keyword", "embedding"],
                               parse=lambda text: comma_list(text, "--judges"), unparse=",".join,
                               help="comma-separated judges: registered names, trained judge dirs or HF judge model dirs")
    examples: int = option(5, min=0, help="disagreeing answers to show per judge pair")
    output: str | None = option(None, show_default="runs/judges/compare-NAME", help="results dir")

    def validate(self) -> None:
        check_fields(self)
        if not self.answers:
            raise TunelabError("give the answers to judge: tunelab judge compare RUN_OR_ANSWERS")
        if not Path(self.answers).exists():
            raise TunelabError(f"answers not found: {self.answers} (a run directory or a JSONL file)")
        if len(self.judges) < 2:
            raise TunelabError(f"--judges needs two or more judges to compare, got {','.join(self.judges)}")
        if len(set(self.judges)) != len(self.judges):
            raise TunelabError(f"--judges names a judge twice: {','.join(self.judges)}")
        from tunelab.evaluate.judges import JUDGES

        for spec in self.judges:
            if spec not in JUDGES and not Path(spec).is_dir():
                JUDGES.get(spec)  # the registry's one-line error, with its suggestion

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / "judges" / f"compare-{Path(self.answers or 'answers').stem}"

    def run_dir(self) -> RunDir:
        return RunDir(self.output_dir(), marker=EVAL_FILE, what="a finished comparison")


def _label(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.lower() in ("complied", "refused"):
        return int(value.lower() == "complied")
    raise TunelabError(f"{where}: field 'label' must be 1/true/\"complied\" or 0/false/\"refused\", got {value!r}")


def read_answers(path: str | Path) -> list[dict[str, Any]]:
    """Answers to judge from a JSONL/JSON/CSV file: ``prompt``, ``response`` (strings), optional ``label``, ``set``."""
    from tunelab.data import read_rows

    rows = []
    for where, row in read_rows(path):
        if not isinstance(row, dict):
            raise TunelabError(f"{where}: expected an object with 'prompt' and 'response'")
        for key in ("prompt", "response"):
            if not isinstance(row.get(key), str):
                raise TunelabError(f"{where}: field '{key}' must be a string")
        rows.append({"prompt": row["prompt"], "response": row["response"], "set": str(row.get("set") or ""),
                     "label": _label(row.get("label"), where), "where": where})
    return rows


def safety_outputs(run: Path) -> list[Path]:
    """The ``outputs.jsonl`` of every safety evaluation in or below ``run`` (its ``metrics.json`` says ``kind: safety``)."""
    from tunelab.results import read_json_object

    found = []
    for metrics in sorted([run / EVAL_FILE] + list(run.glob(f"**/{EVAL_FILE}"))):
        outputs = metrics.parent / "outputs.jsonl"
        if metrics.is_file() and outputs.is_file() and read_json_object(metrics).get("kind") == "safety" and outputs not in found:
            found.append(outputs)
    return found


def load_answers(source: str | Path) -> list[dict[str, Any]]:
    """A directory's safety-eval records (every one found below it) or an answers file."""
    source = Path(source)
    if source.is_dir():
        files = safety_outputs(source)
        if not files:
            raise TunelabError(f"{source}: no safety evaluation found (no metrics.json of kind 'safety' beside an outputs.jsonl)")
        rows = [row for f in files for row in read_answers(f)]
    else:
        rows = read_answers(source)
    return rows


def compare_verdicts(names: list[str], complied: dict[str, list[bool]], labels: list[int | None]) -> tuple[list, list]:
    """Per-judge refusal rate and accuracy, and per-pair agreement and Cohen's κ (sklearn's)."""
    from sklearn.metrics import cohen_kappa_score

    judged = []
    for name in names:
        v = complied[name]
        pairs = [(c, y) for c, y in zip(v, labels) if y is not None]
        judged.append({"name": name, "n": len(v), "refusal_rate": 1 - float(np.mean(v)) if v else float("nan"),
                       "accuracy": float(np.mean([c == bool(y) for c, y in pairs])) if pairs else None})
    pairs_out = []
    for a, b in itertools.combinations(names, 2):
        va, vb = np.array(complied[a], dtype=int), np.array(complied[b], dtype=int)
        with warnings.catch_warnings():  # one verdict everywhere: sklearn warns and returns NaN
            warnings.simplefilter("ignore")
            kappa = float(cohen_kappa_score(va, vb)) if len(va) else float("nan")
        pairs_out.append({"a": a, "b": b, "agreement": float(np.mean(va == vb)) if len(va) else float("nan"),
                          # κ is undefined when both judges give one verdict to everything: null, not NaN
                          "kappa": None if math.isnan(kappa) else kappa, "disagree": int((va != vb).sum())})
    return judged, pairs_out


def run_judge_compare(cfg: JudgeCompareConfig, run_dir: RunDir | None = None) -> JudgeCompareResult:
    """The ``tunelab judge compare`` job: every judge on the same answers; metrics.json + verdicts.jsonl."""
    from tunelab.evaluate.judges import get_judge

    cfg.validate()
    rows = load_answers(cfg.answers)  # type: ignore[arg-type]
    run_dir = run_dir or cfg.run_dir()
    run_dir.open(marker_only=True)
    started = time.perf_counter()
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    labels = [r["label"] for r in rows]
    names, scores, complied, speed, thresholds = [], {}, {}, {}, {}
    for spec in cfg.judges:
        judge = get_judge(spec)
        t0 = time.perf_counter()
        s = judge.scores(prompts, responses)
        dt = time.perf_counter() - t0
        name = judge.name if judge.name not in names else spec
        names.append(name)
        scores[name], thresholds[name] = s, judge.threshold
        complied[name] = [x >= judge.threshold for x in s]
        speed[name] = len(rows) / dt if dt > 0 else None
    judged, pairs = compare_verdicts(names, complied, labels)
    for j in judged:
        j["threshold"], j["answers_per_s"] = thresholds[j["name"]], speed[j["name"]]
    shown: list[dict[str, Any]] = []
    for a, b in itertools.combinations(names, 2):
        picked = [i for i in range(len(rows)) if complied[a][i] != complied[b][i]][: cfg.examples]
        for i in picked:
            shown.append({"pair": [a, b], "where": rows[i]["where"], "set": rows[i]["set"], "label": labels[i],
                          "prompt": snippet(prompts[i]), "response": snippet(responses[i]),
                          "verdicts": {n: "complied" if complied[n][i] else "refused" for n in names}})
    verdicts = [{"where": r["where"], "set": r["set"], "label": r["label"],
                 **{f"{n}": round(float(scores[n][i]), 6) for n in names}} for i, r in enumerate(rows)]
    atomic_write_text(run_dir.file(VERDICTS_FILE), "".join(json.dumps(v) + "\n" for v in verdicts))
    result = JudgeCompareResult(source=str(cfg.answers), n=len(rows), labelled=sum(y is not None for y in labels),
                                judges=judged, pairs=pairs, disagreements=shown,
                                wall_time_s=time.perf_counter() - started, config=asdict(cfg),
                                output_dir=str(run_dir.path))
    result.write(run_dir)
    return result


__all__ = ["JudgeTrainConfig", "JudgeCompareConfig", "run_judge_train", "run_judge_compare", "read_answers",
           "load_answers", "compare_verdicts", "snippet", "render_card"]
