"""``tunelab audit privacy``: score a trained model's canaries and audit them.

The subject is a finished run that trained with ``--canaries`` (its ``canaries.json`` holds the
canaries and their membership), or any model + adapter with a canary file: a tunelab canary set,
or a JSONL/CSV/Parquet file of ``{"prompt", "response", "member"}`` records (``member`` true for
the canaries the model was trained on). Every canary gets the asked-for membership scores
(:mod:`tunelab.privacy.scores`); :class:`~tunelab.privacy.audit.CanaryScoreAuditor` turns each
score into TPR@FPR with bootstrap CIs, AUROC, the ROC and the one-run ε lower bound beside its
ceiling. The job :func:`run_privacy_audit` (``(cfg: PrivacyAuditConfig, run_dir=None) -> PrivacyAuditResult``)
writes ``OUTPUT/metrics.json`` (kind ``privacy-audit``, written last) and ``OUTPUT/scores.jsonl``
(one line per canary: index, membership, scores — never the secret).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.layout import RUN_FILE
from tunelab.privacy.results import PrivacyAuditResult
from tunelab.privacy.audit import BootstrapParams, CanaryScoreAuditor
# the config and its name lists live in a light module (the CLI builds its flags from it at import)
from tunelab.privacy.audit_config import DEFAULT_FPRS, PRIVACY_DIR, STRATEGIES, PrivacyAuditConfig  # noqa: F401 (re-exported)
from tunelab.privacy.canaries import CanarySet
from tunelab.privacy.scores import DISABLE_ADAPTER
from tunelab.results import RunDir

CANARY_FILE = "canaries.json"  # beside a run that trained with --canaries
SCORES_FILE = "scores.jsonl"
MAX_ROC_POINTS = 2000  # ROC points kept in metrics.json (the curve, not the raw scores)


# --------------------------------------------------------------------------- inputs
def load_canary_file(path: str | Path) -> tuple[list[dict[str, Any]], list[bool], dict[str, Any]]:
    """(records, membership, description) from a tunelab canary set or a data file with a ``member`` field."""
    from tunelab.files import read_bytes

    path = Path(path)
    if not path.exists():
        raise TunelabError(f"canary file not found: {path}")
    head = read_bytes(path, "canary file")[:4096] if path.is_file() else b""
    if b'"tunelab-canaries"' in head:
        cs = CanarySet.load(path)
        return cs.records(), [c.member for c in cs.canaries], describe(cs)
    from tunelab.data import read_rows, validate_record

    text_cells = path.suffix.lower() == ".csv"  # CSV has no booleans: its cells are text
    records, member = [], []
    for where, row in read_rows(path):
        flag = _membership(row.get("member") if isinstance(row, dict) else None, text_cells)
        if flag is None:
            raise TunelabError(f"{where}: field 'member' must be true or false (is this canary trained on?)")
        record = {k: v for k, v in row.items() if k != "member"}
        validate_record(record, where)
        records.append(record)
        member.append(flag)
    return records, member, {"family": "user", "m": len(records), "members": sum(member),
                             "non_members": len(member) - sum(member), "file": str(path)}


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _membership(value: Any, text_cells: bool) -> bool | None:
    """A row's ``member`` as a bool; CSV text ``true``/``false``/``1``/``0``/``yes``/``no`` (any case)
    counts there only — JSON has real booleans and keeps them strict. ``None``: not a membership value."""
    if isinstance(value, bool):
        return value
    if text_cells and isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE else False if word in _FALSE else None
    return None


def describe(cs: CanarySet) -> dict[str, Any]:
    """What reports and records say about a canary set: never its secrets."""
    return {"family": cs.family, "m": len(cs), "members": len(cs.members), "non_members": len(cs.non_members),
            "secret_len": cs.params.get("secret_len"), "prefix_style": cs.params.get("prefix_style"), "seed": cs.seed}


def _resolve(cfg: PrivacyAuditConfig) -> tuple[str, str | None, Path]:
    """(model, adapter, canary file) of the audit."""
    run = Path(cfg.run) if cfg.run else None
    if run is not None:
        canaries = Path(cfg.canaries) if cfg.canaries else run / CANARY_FILE
        if not canaries.is_file():
            raise TunelabError(f"{run}: no {CANARY_FILE} (train with --canaries M, or pass --canaries FILE)")
        record = _run_record(run)
        model = cfg.model or record.get("base_model") or _config_model(run)
        return model, cfg.adapter or str(run), canaries
    assert cfg.canaries is not None
    return cfg.model or "smollm2-135m", cfg.adapter, Path(cfg.canaries)


def _run_record(run: Path) -> dict[str, Any]:
    from tunelab.files import read_json

    return read_json(run / RUN_FILE, "run record") if (run / RUN_FILE).is_file() else {}


def _config_model(run: Path) -> str:
    """The base model of a run still being finished (its tunelab.json is written after the audit)."""
    from tunelab.configs import read_option
    from tunelab.layout import CONFIG_FILE
    from tunelab.train.config import TrainConfig

    if not (run / CONFIG_FILE).is_file():
        raise TunelabError(f"{run}: not a tunelab run (no {RUN_FILE} or {CONFIG_FILE}); pass --model")
    return read_option(run / CONFIG_FILE, TrainConfig, "model")  # the checked YAML reader: one-line errors


def _base_for(model_name: str, tokenizer: Any) -> Any:
    """The base model as the run started: tokens the run added (refusal, new-token canaries) get the
    rows training gave them at the start (the mean row), so the reference can read every canary."""
    from tunelab.evaluate.loading import grow_to_tokenizer
    from tunelab.models import load_model

    base, base_tokenizer = load_model(model_name)
    grow_to_tokenizer(base, base_tokenizer, tokenizer)
    return base


# --------------------------------------------------------------------------- audit
def audit_scores(scores: dict[str, Any], member: list[bool], cfg: PrivacyAuditConfig) -> dict[str, dict[str, Any]]:
    """Per score name: the auditor's summary (TPR@FPR + CIs, AUROC, ε_LB and ceiling) plus its ROC."""
    import numpy as np

    is_in = np.asarray(member, dtype=bool)
    bootstrap = BootstrapParams(num_samples=cfg.bootstrap_samples, seed=cfg.seed) if cfg.bootstrap_samples else None
    out = {}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        auditor = CanaryScoreAuditor(values[is_in], values[~is_in])
        summary = auditor.summary(cfg.delta, cfg.significance, cfg.threshold_strategy,  # type: ignore[arg-type]
                                  fprs=tuple(cfg.fprs), bootstrap=bootstrap, seed=cfg.seed)
        roc = auditor.roc()
        keep = np.unique(np.linspace(0, len(roc.fpr) - 1, min(len(roc.fpr), MAX_ROC_POINTS)).round().astype(int))
        summary["roc"] = {"fpr": roc.fpr[keep].tolist(), "tpr": roc.tpr[keep].tolist()}
        out[name] = summary
    return out


def headline(result: PrivacyAuditResult | dict[str, Any]) -> dict[str, Any]:
    """The numbers a run record keeps: family, m, ε_LB beside its ceiling, TPR@1%FPR, AUROC.

    ``result``: an audit's :class:`PrivacyAuditResult` (or its ``metrics.json`` object).
    """
    if isinstance(result, dict):
        result = PrivacyAuditResult.from_dict(result)
    name = result.headline_score
    assert name is not None
    s = result.scores[name]
    tpr1 = next((row["tpr"] for row in s["tpr_at_fpr"] if math.isclose(row["fpr"], 0.01)), None)
    return {"score": name, "family": result.canaries.get("family"), "m": s["m"], "members": s["n_members"],
            "audited_m": s["epsilon"]["m"],  # the canaries ε_LB and its ceiling rest on (split: the held half)
            "epsilon_lb": s["epsilon_lb"], "epsilon_ceiling": s["epsilon_ceiling"], "tpr_at_1pct_fpr": tpr1,
            "auroc": s["auroc"]["value"], "delta": result.delta, "significance": result.significance,
            "threshold_strategy": s["epsilon"]["threshold_strategy"]}


def run_privacy_audit(cfg: PrivacyAuditConfig, run_dir: RunDir | None = None, *, console: Any = None) -> PrivacyAuditResult:
    """Score every canary with each of ``cfg.scores``, audit, write ``scores.jsonl`` + ``metrics.json``.

    A job (:class:`tunelab.results.Job`): ``run_dir`` (default ``cfg.run_dir()``: ``--output``, else
    ``RUN/eval/privacy``, else ``runs/privacy-audit``) receives ``scores.jsonl`` (one line per canary,
    never the secret) and, last, ``metrics.json``; the returned :class:`PrivacyAuditResult` is what
    ``metrics.json`` holds (its ``output`` is ``run_dir``'s path). ``console`` is unused (kept for callers).
    """
    from tunelab.evaluate.loading import load_with_adapter
    from tunelab.privacy.scores import score_canaries
    from tunelab.train.config import bf16_supported

    cfg.validate()
    run_dir = run_dir if run_dir is not None else cfg.run_dir()
    model_name, adapter, canary_file = _resolve(cfg)
    out = run_dir.path
    records, member, about = load_canary_file(canary_file)
    if all(member) or not any(member):
        raise TunelabError(f"{canary_file}: the audit needs members and non-members; "
                           f"{sum(member)} of {len(member)} canaries are members")
    if cfg.threshold_strategy == "split" and len(member) % 2:
        raise TunelabError(f"--threshold-strategy split halves the canaries: m must be even, got m={len(member)}")
    if "reference" in cfg.scores and adapter is None:
        raise TunelabError("the 'reference' score compares with the base model: it needs --adapter (or a run)")
    start = time.perf_counter()
    model, tokenizer = load_with_adapter(model_name, adapter, merge=False)
    reference: Any = None
    if "reference" in cfg.scores:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            reference = DISABLE_ADAPTER
        else:  # a full fine-tune or a LoTA task vector: the base is a second model
            reference = _base_for(model_name, tokenizer)
    bf16 = bf16_supported() if cfg.bf16 is None else cfg.bf16
    values = score_canaries(model, tokenizer, records, tuple(cfg.scores), batch_size=cfg.batch_size,
                            reference=reference, k=cfg.k, bf16=bf16)
    per_score = audit_scores(values, member, cfg)
    metrics = {"kind": "privacy-audit", "subject": str(cfg.run or adapter or model_name), "model": model_name,
               "adapter": adapter, "canaries": about, "delta": cfg.delta, "significance": cfg.significance,
               "threshold_strategy": cfg.threshold_strategy, "fprs": list(cfg.fprs), "headline_score": cfg.scores[0],
               "scores": per_score, "config": asdict(cfg), "bf16": bf16}
    metrics.update({k: v for k, v in headline(metrics).items() if k in ("epsilon_lb", "epsilon_ceiling", "tpr_at_1pct_fpr", "auroc")})
    metrics["seconds"] = time.perf_counter() - start
    metrics["output"] = str(out)
    lines = [json.dumps({"index": i, "member": m, **{name: float(v[i]) for name, v in values.items()}})
             for i, m in enumerate(member)]
    run_dir.write_text(SCORES_FILE, "\n".join(lines) + "\n")
    result = PrivacyAuditResult.from_dict(metrics)
    result.write(run_dir)  # last: marks a finished audit
    return result


def canary_listing(cfg: PrivacyAuditConfig) -> str:
    """Every canary of the audit with its membership and secret: for ``--show-secrets`` only."""
    records, member, about = load_canary_file(_resolve(cfg)[2])
    lines = [f"{about.get('family')} canaries, m={len(records)} (index, membership, prompt, secret):"]
    for i, (record, m) in enumerate(zip(records, member)):
        lines.append(f"{i}\t{'member' if m else 'non-member'}\t{record.get('prompt')!r}\t{record.get('response')!r}")
    return "\n".join(lines)


__all__ = ["CANARY_FILE", "PrivacyAuditConfig", "audit_scores", "canary_listing", "describe", "headline", "load_canary_file",
           "run_privacy_audit"]
