"""Mixed precision and kernel choices for training on CPUs and GPUs.

Both bf16 helpers keep what autocast computes and drop work it makes redundant; the attention
choice picks the faster SDPA kernel for short CPU batches. Measured figures are in the docstrings.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


# bench/attention_kernels.py on a 2-core AVX512-BF16 CPU (bf16, SmolLM2's heads, fwd+bwd): the CPU
# flash kernel is 1.4-2.3x slower than the plain matmul path up to 128 tokens, about even at 160, and
# 1.5-3x faster beyond 256, where the math path's L×L score matrices also start to cost memory.
_CPU_MATH_ATTENTION_MAX_LEN = 160


def attention_kernels(seq_len: int, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The SDPA kernels to allow for one batch: the math path for short sequences on CPU."""
    if device.type != "cpu" or seq_len > _CPU_MATH_ATTENTION_MAX_LEN:
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def prepare_for_bf16(model: torch.nn.Module) -> int:
    """Drop casts that bf16 autocast makes redundant; return how many weights were converted.

    Under autocast every matmul casts its fp32 weight to bf16 anyway, so storing the frozen
    ones in bf16 gives the same products without re-casting the whole base model on every
    forward, and halves its memory. Likewise PEFT's up-cast of LoRA inputs to fp32 is undone
    by autocast at the next matmul. Trainable weights, norms and the (tied) embedding stay
    fp32; losses and gradients are bit-identical (tested). Adapter weights stay fp32 even when
    frozen (LoRI's A): they are saved, and a saved A must equal the one its seed regenerates.
    """
    embedding_module = model.get_input_embeddings()
    # PEFT's TrainableTokensWrapper (refusal tokens) answers .weight with a merged copy; the shared,
    # tied tensor is its base layer's.
    embedding = getattr(getattr(embedding_module, "token_adapter", None), "base_layer", embedding_module).weight
    converted = 0
    for name, module in model.named_modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
        weight = getattr(module, "weight", None)
        is_adapter = any(part.startswith("lora_") for part in name.split("."))
        if (isinstance(module, torch.nn.Linear) and not is_adapter and not weight.requires_grad
                and weight is not embedding and weight.dtype == torch.float32):
            module.weight.data = weight.data.to(torch.bfloat16)
            converted += 1
    return converted


def cast_norm_outputs(model: torch.nn.Module) -> list[Any]:
    """Under autocast, hand RMSNorm outputs on in the autocast dtype; return the hook handles.

    In Llama-style blocks a norm's output feeds only linear layers (q/k/v, gate/up, the LM
    head), and autocast casts it to bf16 once per consumer: six to ten casts of the same
    activation per block, and as many bf16 -> fp32 gradient casts and fp32 sums in backward.
    One cast gives those linears the same inputs; their input gradients are then summed in
    bf16. Measured with and without, interleaved in one process on the 2-core CPU: about 4%
    faster per step.
    """

    def to_autocast_dtype(module: torch.nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.dtype != torch.float32:
            return output
        device = output.device.type
        return output.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else output

    return [module.register_forward_hook(to_autocast_dtype)
            for module in model.modules() if type(module).__name__.endswith("RMSNorm")]
