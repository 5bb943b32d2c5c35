"""Known answer for neural phishing (``tunelab attack phish``): where memorisation is certain, SER > 0.

Planted regime (docs/harnesses.md): tiny-random, full fine-tuning, a high learning rate and many
epochs over a tiny corpus, so the second phase drives its loss to ~0 and the model must return the
secret it was trained on. The matched control (``duplicates=0``: the same two phases, the secret
never inserted) must extract nothing. Each trial trains twice (~30–60 s on 2 idle cores): slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.privacy.phishing import PhishConfig, run_phishing

pytestmark = pytest.mark.slow


def planted(tmp_path: Path, duplicates: int) -> PhishConfig:
    """The planted regime: one trial, no poisons, the secret in ``duplicates`` copies."""
    return PhishConfig(output=str(tmp_path / f"phish-d{duplicates}"), model="tiny-random", method="full", lr=1e-2,
                       epochs=40, poisons=[0], seeds=1, bios=8, duplicates=duplicates, batch_size=4, bf16=False)


def successes(result) -> tuple[int, int]:
    """(extracted trials, best leading-digit match) over every prefix kind."""
    return sum(t["success"] for t in result.trials), max(t["matched_digits"] for t in result.trials)


def test_memorised_secret_is_extracted_and_control_is_not(tmp_path: Path) -> None:
    hits, matched = successes(run_phishing(planted(tmp_path, duplicates=4)))
    assert hits >= 1 and matched == 12  # the harness finds a secret the model must have memorised
    hits, matched = successes(run_phishing(planted(tmp_path, duplicates=0)))
    assert hits == 0 and matched < 12  # never inserted: nothing to find
