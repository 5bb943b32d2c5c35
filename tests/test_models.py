from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models import ALIASES, load_model


def test_tiny_random_is_a_small_llama_with_smollm2_tokenizer(tiny):
    model, tokenizer = tiny
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.pad_token is not None


def test_tiny_random_is_deterministic_across_fresh_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tunelab import models

    reference, _ = load_model("tiny-random")
    smollm2 = models.resolve_model_path("smollm2-135m")  # the tokenizer source stays shared
    monkeypatch.setattr(models, "_smollm2_dir", lambda: Path(smollm2))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    rebuilt, _ = load_model("tiny-random")
    assert (tmp_path / "tiny-random" / "model.safetensors").is_file()
    for (n1, p1), (n2, p2) in zip(reference.state_dict().items(), rebuilt.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_unknown_model_names_the_aliases():
    with pytest.raises(TunelabError) as info:
        load_model("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message and all(alias in message for alias in ALIASES)
    assert "\n" not in message


def test_directory_without_config_is_refused(tmp_path: Path):
    with pytest.raises(TunelabError, match="no config.json"):
        load_model(str(tmp_path))
