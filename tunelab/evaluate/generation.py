"""Batched generation: chat-formatted prompts, left padding, KV cache, length-sorted batches."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
from rich.progress import Progress

from tunelab.errors import TunelabError

Prompt = str | list[dict[str, str]]


def render_prompts(tokenizer: Any, prompts: Sequence[Prompt], chat: bool = True) -> list[str]:
    """Prompt strings (or message lists) → model input text via the tokenizer's chat template."""
    if not chat:
        return [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    if tokenizer.chat_template is None:
        raise TunelabError("the tokenizer has no chat template; pass chat=False for a base model")
    out = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = True,
    bf16: bool = False,
    progress: bool = True,
) -> list[str]:
    """Complete every prompt; return the new text only, in the order given.

    Prompts are sorted by length so each batch pads little, then left-padded so the KV cache
    and the new tokens line up. Greedy unless ``do_sample``; ``seed`` makes sampling repeatable.
    """
    if not prompts:
        raise TunelabError("no prompts to generate from")
    texts = render_prompts(tokenizer, prompts, chat)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(texts)
    if seed is not None:
        torch.manual_seed(seed)
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with Progress(disable=not progress, transient=True) as bar, autocast:
        task = bar.add_task("generating", total=len(texts))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i]
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention_mask[row, width - len(ids):] = 1
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling,
            )
            for row, i in enumerate(idx):
                results[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
            bar.advance(task, len(idx))
    return results
