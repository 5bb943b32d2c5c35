"""Safety-recovery augmentation: teach a model to refuse even after a compliant opening.

For each harmful→refusal record (``source == "harmful-refusal"`` in the safety recipe's data,
or every record with ``all_records``), with probability ``p`` the record becomes
(x, h≤k, r): the assistant turn starts with the first k tokens of the neutral affirmative
opening (:data:`tunelab.safety.depth.AFFIRMATIVE_OPENING`), k ~ U{1..min(max_prefix, |h|)},
stored as the record's ``"prefix"`` (read by the model, masked from the loss by
:func:`tunelab.data.tokenize_chat`), followed by a recovery refusal r ("I cannot continue with
this request. ..."). Otherwise the record stays (x, r). Everything else (the benign utility
anchor) passes through unchanged. The prefix is filler text, never harmful content.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tunelab.control_tokens import HARMFUL_SOURCE
from tunelab.errors import TunelabError
from tunelab.layout import atomic_write_text
from tunelab.safety.depth import AFFIRMATIVE_OPENING, opening_ids

RECOVERY_SOURCE = "harmful-recovery"
# Recovery refusals: break off and decline, naming nothing about the request. The leading space
# joins them to a prefix that ends mid-sentence (the assistant turn is prefix + response verbatim).
RECOVERY_TEMPLATES: tuple[str, ...] = (
    " I cannot continue with this request. Going on could help cause real harm, so I will stop here. "
    "If you have another question, I'm happy to help.",
    " I cannot continue with this. On reflection, this is a request I won't help with, because it could hurt people. "
    "Is there something else I can do for you?",
    " I'm sorry, but I can't continue with this response. Helping with this request could be harmful, so I'm stopping here. "
    "I'd be glad to help with a different task.",
    " Actually, I cannot continue. This request asks for something that could put people at risk, and I won't provide it. "
    "Let me know if there is anything else you need.",
)


def augment_recovery(
    records: list[dict[str, Any]],
    tokenizer: Any,
    p: float = 0.5,
    max_prefix: int = 100,
    seed: int = 0,
    all_records: bool = False,
    opening: str = AFFIRMATIVE_OPENING,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Return (augmented records in the same order, counts); deterministic for ``seed``.

    Each eligible record draws its coin and its k from one seeded RNG in file order, so the
    same input, seed and tokenizer always give the same output.
    """
    if not 0.0 <= p <= 1.0:
        raise TunelabError(f"--p must be in [0, 1], got {p}")
    if max_prefix < 1:
        raise TunelabError(f"--max-prefix must be >= 1, got {max_prefix}")
    h = opening_ids(tokenizer, opening)
    upper = min(max_prefix, len(h))
    rng = random.Random(f"tunelab-recovery/{seed}")
    out: list[dict[str, Any]] = []
    counts = {"records": len(records), "eligible": 0, "augmented": 0}
    for record in records:
        eligible = all_records or record.get("source") == HARMFUL_SOURCE
        if not eligible:
            out.append(record)
            continue
        counts["eligible"] += 1
        # Draw both numbers for every eligible record, so one record's coin never shifts another's k.
        coin, k, template = rng.random(), rng.randint(1, upper), rng.choice(RECOVERY_TEMPLATES)
        if coin >= p:
            out.append(record)
            continue
        if "prompt" not in record:
            raise TunelabError("recovery augmentation needs {'prompt', 'response'} records (the safety recipe's format)")
        prefix = tokenizer.decode(h[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.append({**record, "prefix": prefix, "response": template, "source": RECOVERY_SOURCE, "prefix_tokens": k})
        counts["augmented"] += 1
    return out, counts


def augment_recovery_file(
    data: str | Path,
    output: str | Path,
    tokenizer: Any,
    p: float = 0.5,
    max_prefix: int = 100,
    seed: int = 0,
    all_records: bool = False,
) -> dict[str, Any]:
    """Read ``data`` (JSONL/CSV/...), augment it, write JSONL to ``output`` atomically; return a summary."""
    from tunelab.data import read_rows, validate_record

    rows = read_rows(data)
    for where, row in rows:
        validate_record(row, where)  # a bad input record fails here, with its line
    records, counts = augment_recovery([row for _, row in rows], tokenizer, p=p, max_prefix=max_prefix, seed=seed,
                                       all_records=all_records)
    path = Path(output)
    if path.is_dir():
        raise TunelabError(f"output {path} is a directory; give a file path such as {path / 'data.jsonl'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    except OSError as exc:
        raise TunelabError(f"cannot write {path}: {exc.strerror or exc}") from None
    return {"output": str(path), **counts, "p": p, "max_prefix": max_prefix, "seed": seed}
