"""Models from a size spec: a Llama-style dense decoder or a Mixtral-style MoE, built with
transformers' own classes, with tunelab's routers and blocks swapped into the MoE layers.

A saved model is a standard transformers directory (``config.json`` + ``model.safetensors``,
plus the tokenizer), so ``AutoModelForCausalLM.from_pretrained(dir)`` loads it: a dense model or
a top-k MoE with renormalised gates exactly; other routers load as plain Mixtral top-k routing.
:func:`load_pretrained` rebuilds the trained router (and Default MoE's EMA from
``moe.safetensors``); the router settings travel in ``config.json`` under ``tunelab_moe``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

from tunelab.errors import TunelabError
from tunelab.moe.block import MoeBlock
from tunelab.moe.default_moe import DEFAULT_MODES, DefaultMoeBlock
from tunelab.moe.routers import ROUTERS

MOE_STATE_FILE = "moe.safetensors"
ARCHS = ("dense", "moe")


@dataclass(frozen=True)
class ModelSpec:
    """The size and routing of a model. ``ffn`` is each expert's hidden width for MoE (the MLP's
    for dense); ``heads`` default to width ÷ 32 (at least 1)."""

    arch: str = "moe"
    width: int = 64
    depth: int = 4
    heads: int | None = None
    kv_heads: int | None = None
    ffn: int | None = None  # default: 2 × width per expert (MoE), 2 × top-k × width (dense)
    experts: int = 8
    top_k: int = 2
    router: str = "topk"
    renormalize: bool = True
    default_beta: float = 0.9
    default_mode: str = "forward"
    sinkhorn_tol: float = 1e-4
    sinkhorn_iters: int = 100
    seq_len: int = 256
    vocab_size: int = 259
    tie_embeddings: bool = True

    def resolved(self) -> ModelSpec:
        """Defaults filled in; raises TunelabError for shapes that cannot be built."""
        self.check()
        heads = self.heads or max(1, self.width // 32)
        ffn = self.ffn or (2 * self.width if self.arch == "moe" else 2 * self.top_k * self.width)
        spec = ModelSpec(**{**asdict(self), "heads": heads, "kv_heads": self.kv_heads or heads, "ffn": ffn})
        if spec.width % heads:
            raise TunelabError(f"--width {spec.width} is not divisible by --heads {heads}")
        if heads % spec.kv_heads:
            raise TunelabError(f"--heads {heads} is not divisible by --kv-heads {spec.kv_heads}")
        if (spec.width // heads) % 2:
            raise TunelabError(f"head dim {spec.width // heads} (width ÷ heads) must be even for rotary embeddings")
        return spec

    def check(self) -> None:
        if self.arch not in ARCHS:
            raise TunelabError(f"--arch must be one of {', '.join(ARCHS)}, got '{self.arch}'")
        if self.router not in ROUTERS:
            raise TunelabError(f"--router must be one of {', '.join(ROUTERS)}, got '{self.router}'")
        if self.default_mode not in DEFAULT_MODES:
            raise TunelabError(f"--default-mode must be one of {', '.join(DEFAULT_MODES)}, got '{self.default_mode}'")
        for name in ("width", "depth", "experts", "top_k", "seq_len", "vocab_size", "sinkhorn_iters"):
            if getattr(self, name) < 1:
                raise TunelabError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("heads", "kv_heads", "ffn"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise TunelabError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.arch == "moe" and self.top_k > self.experts:
            raise TunelabError(f"--top-k {self.top_k} is more than --experts {self.experts}")
        if not 0.0 <= self.default_beta < 1.0:
            raise TunelabError(f"--default-beta must be in [0, 1), got {self.default_beta:g}")

    def hf_config(self) -> LlamaConfig | MixtralConfig:
        spec = self.resolved()
        common = dict(vocab_size=spec.vocab_size, hidden_size=spec.width, intermediate_size=spec.ffn,
                      num_hidden_layers=spec.depth, num_attention_heads=spec.heads,
                      num_key_value_heads=spec.kv_heads, max_position_embeddings=spec.seq_len,
                      tie_word_embeddings=spec.tie_embeddings, bos_token_id=None, eos_token_id=1, pad_token_id=0)
        if spec.arch == "dense":
            return LlamaConfig(**common, attention_bias=False, mlp_bias=False)
        config = MixtralConfig(**common, num_local_experts=spec.experts, num_experts_per_tok=spec.top_k,
                               router_aux_loss_coef=0.0, output_router_logits=False, sliding_window=None)
        config.tunelab_moe = {k: getattr(spec, k) for k in ("router", "renormalize", "default_beta", "default_mode",
                                                             "sinkhorn_tol", "sinkhorn_iters")}
        return config

    def flop_matched_dense(self) -> ModelSpec:
        """A dense model with the MoE's active compute per token: MLP width = top-k × expert width."""
        spec = self.resolved()
        return ModelSpec(**{**asdict(spec), "arch": "dense", "ffn": spec.top_k * spec.ffn})


def build_model(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised model for ``spec`` (seeded), with tunelab's MoE blocks."""
    config = spec.hf_config()
    torch.manual_seed(seed)
    model = (LlamaForCausalLM if spec.arch == "dense" else MixtralForCausalLM)(config)
    if spec.arch == "moe":
        install_blocks(model)
    return model


def _routing(config: Any) -> dict[str, Any]:
    """The router settings ``config.tunelab_moe`` holds (plain top-k when absent: a stock Mixtral config)."""
    return getattr(config, "tunelab_moe", None) or {"router": "topk", "renormalize": True}


def trained_router(model: torch.nn.Module) -> str | None:
    """The router a saved or built MoE was trained with; ``None`` for a dense model."""
    return _routing(model.config)["router"] if getattr(model.config, "num_local_experts", None) is not None else None


def make_block(config: MixtralConfig) -> MoeBlock:
    """The block ``config.tunelab_moe`` names (plain top-k when absent: a stock Mixtral config)."""
    s = _routing(config)
    # a name this version does not know loads as plain top-k routing, as a stock Mixtral config does
    return ROUTERS.get(s["router"] if s["router"] in ROUTERS else "topk").block(config, s)


def install_blocks(model: torch.nn.Module) -> None:
    """Replace each Mixtral layer's MoE block by tunelab's, keeping its weights."""
    for layer in model.model.layers:
        old = layer.mlp
        new = make_block(model.config).to(device=old.gate.weight.device, dtype=old.gate.weight.dtype)
        new.load_state_dict(old.state_dict())
        layer.mlp = new


def moe_blocks(model: torch.nn.Module) -> list[MoeBlock]:
    """The model's MoE blocks in layer order (empty for a dense model)."""
    return [m for m in model.modules() if isinstance(m, MoeBlock)]


def is_moe(model: torch.nn.Module) -> bool:
    return bool(moe_blocks(model))


def spec_of(model: torch.nn.Module) -> dict[str, Any]:
    """The size spec of a built or loaded model, for comparing architectures."""
    c = model.config
    moe = getattr(c, "num_local_experts", None) is not None
    return {"arch": "moe" if moe else "dense", "width": c.hidden_size, "depth": c.num_hidden_layers,
            "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "ffn": c.intermediate_size,
            "experts": c.num_local_experts if moe else None, "top_k": c.num_experts_per_tok if moe else None,
            "vocab_size": c.vocab_size}


def save_model(model: torch.nn.Module, directory: Path) -> None:
    """``save_pretrained`` (safetensors) plus Default MoE's EMA buffers in ``moe.safetensors``."""
    model.save_pretrained(directory, safe_serialization=True)
    defaults = {f"layers.{i}.defaults": b.defaults.contiguous() for i, b in enumerate(moe_blocks(model))
                if isinstance(b, DefaultMoeBlock)}
    if defaults:
        save_file(defaults, str(directory / MOE_STATE_FILE))


def load_pretrained(directory: str | Path) -> torch.nn.Module:
    """A saved model with its trained routers (and EMA defaults) restored; fp32."""
    from transformers import AutoModelForCausalLM

    from safetensors import SafetensorError

    from tunelab.files import load_safetensors
    from tunelab.models import check_model_dir

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise TunelabError(f"{directory}: not a model directory (no config.json)")
    check_model_dir(directory)  # a truncated config or weights file: one line naming it, before transformers
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise TunelabError(f"cannot load {directory}: {str(exc).splitlines()[0]}") from exc
    if getattr(model.config, "num_local_experts", None) is not None:
        install_blocks(model)
        state = directory / MOE_STATE_FILE
        if state.is_file():
            _, tensors = load_safetensors(state, "Default MoE state")
            for i, block in enumerate(moe_blocks(model)):
                if f"layers.{i}.defaults" in tensors:
                    block.defaults = tensors[f"layers.{i}.defaults"].to(block.defaults)
    return model
