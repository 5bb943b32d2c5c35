"""Batched generation: chat-formatted prompts, left padding, KV cache, length-sorted batches.

Prompts are sorted by length into batches, left-padded, prefilled once, then decoded one token
per step from the KV cache. A row that emits EOS leaves the batch: its entries are dropped from
the cache, so later steps compute only the rows still generating (with the mixed answer lengths
of real prompts, about half the row-steps of a fixed batch are otherwise spent on finished rows).
The cache goes in under whichever name the model's forward takes (``cache`` since
transformers 5.24, ``past_key_values`` before). Models this loop can't drive (encoder-decoders,
PEFT prompt learning, forwards without a cache argument or ``position_ids``) go through HF
``model.generate`` instead, with an explicit, fully specified ``GenerationConfig``, so the model's
``generation_config.json`` can't turn greedy into sampling or add penalties there either. That
fallback is much slower, so it is never silent: it logs a warning (once per model class and
reason), and :func:`decoder` / :func:`record_decoders` say which decoder ran.

Decoding is plain greedy (argmax) or temperature + top-p sampling. Sampling draws each prompt's
tokens from its own ``torch.Generator`` seeded by hash(seed, prompt index): a seeded run is
repeatable, leaves the global RNG alone, and a prompt's sample does not depend on which prompts
share its batch, the batch size, or anything run before (up to the rare floating-point
differences that padding can make to the logits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import math
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Callable, Iterator, Sequence

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TopPLogitsWarper
from transformers.cache_utils import Cache

from tunelab.errors import TunelabError

Prompt = str | list[dict[str, str]]

logger = logging.getLogger(__name__)

OWN_DECODER = "tunelab"  # what decoder() says for the batched loop; a fallback says "hf-generate: <reason>"

# The name of the KV cache as a forward argument and as an output field: "cache" since
# transformers 5.24 (where "past_key_values" is a deprecated alias that warns), before that
# "past_key_values".
_CACHE_NAMES = ("cache", "past_key_values")

# Decoding knobs a model's generation_config.json may set (Qwen/Llama ship do_sample=True,
# temperature, top_p, top_k, repetition_penalty). HF generate fills every field we leave None
# from the model's config, so each gets an explicit neutral value. Sampling is done by
# _Sampler with HF in greedy mode, so HF's own sampling warpers never run.
_NEUTRAL_DECODING = dict(
    do_sample=False, num_beams=1, temperature=1.0, top_p=1.0, top_k=50, typical_p=1.0,
    epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
    no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, min_new_tokens=0, guidance_scale=1.0,
    renormalize_logits=False, remove_invalid_values=False, num_return_sequences=1,
)

# on_step(new_tokens, finished_prompts): progress callback, once per decoding step.
StepCallback = Callable[[int, int], None]
# first_step(scores) -> scores: rewrites the first decoding step's scores [batch, vocab] only
# (refusal-token control: force or bias the opening control token; tunelab.safety.refusal_tokens).
FirstStep = Callable[[torch.Tensor], torch.Tensor]


def render_prompts(tokenizer: Any, prompts: Sequence[Prompt], chat: bool = True) -> list[str]:
    """Prompt strings (or message lists) → model input text via the tokenizer's chat template.

    With ``chat=False`` a string is used as is and a message list contributes its last
    message's content (for base models without a chat template).
    """
    for i, p in enumerate(prompts):
        ok = isinstance(p, str) or (
            isinstance(p, list) and len(p) > 0 and all(isinstance(m, dict) and "content" in m for m in p)
        )
        if not ok:
            raise TunelabError(
                f"prompt {i} must be a string or a non-empty list of {{'role', 'content'}} messages, "
                f"got {type(p).__name__}"
            )
    if not chat:
        return [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    if tokenizer.chat_template is None:
        raise TunelabError("the tokenizer has no chat template; pass chat=False for a base model")
    out = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def pad_rows(rows: Sequence[Sequence[int]], pad: int, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token rows padded to the longest with ``pad`` on ``side``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, seq in enumerate(rows):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def prompt_seed(seed: int, index: int) -> int:
    """The sampling seed of prompt ``index`` in a run seeded ``seed`` (stable across processes)."""
    digest = hashlib.sha256(f"tunelab-generate:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class _Sampler(LogitsProcessor):
    """Temperature + top-p sampling, one generator per batch row.

    ``draw`` picks the next token of each row. As an HF logits processor (the fallback path,
    with HF in greedy mode) it returns scores that are -inf except at the drawn token, so HF's
    argmax takes the sample.
    """

    def __init__(self, temperature: float, top_p: float, generators: list[torch.Generator]):
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self.generators = generators

    def draw(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return torch.cat([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(self.generators)])

    def keep(self, rows: list[int]) -> None:
        """Follow the batch when finished rows leave it."""
        self.generators = [self.generators[r] for r in rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        picks = self.draw(scores)
        chosen = torch.full_like(scores, -math.inf)
        chosen[torch.arange(len(picks), device=scores.device), picks] = 0.0
        return chosen


class _FirstStepProcessor(LogitsProcessor):
    """HF-generate form of ``first_step``: applies it while nothing has been generated yet."""

    def __init__(self, first_step: FirstStep, prompt_width: int):
        self.first_step = first_step
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.first_step(scores) if input_ids.shape[1] == self.prompt_width else scores


def encode_texts(tokenizer: Any, texts: list[str], chat: bool) -> list[list[int]]:
    """Token ids of rendered prompts, with the tokenizer's BOS exactly once where it uses one (public: steering and
    safety depth encode the same way).

    A chat template writes the special tokens into the text itself. Raw text (``chat=False``)
    gets the tokenizer's usual ones (a Llama base model wants its BOS), unless the caller
    already rendered a template into it (text starting with the BOS token).
    """
    plain: list[list[int]] = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if chat:
        return plain
    bos = tokenizer.bos_token
    special: list[list[int]] = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [p if bos and t.startswith(bos) else s for t, p, s in zip(texts, plain, special)]


def _special_ids(model: Any, tokenizer: Any) -> tuple[list[int], int]:
    """(EOS ids, pad id): the model's generation_config EOS ids plus the tokenizer's EOS."""
    eos: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in (config_eos if isinstance(config_eos, list) else [config_eos]) + [tokenizer.eos_token_id]:
        if token is not None and token not in eos:
            eos.append(int(token))
    if not eos:
        raise TunelabError("neither the model's generation config nor the tokenizer defines an EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return eos, int(pad)


def _check_args(max_new_tokens: int, batch_size: int, do_sample: bool, temperature: float, top_p: float) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise TunelabError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TunelabError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if do_sample:  # greedy ignores them: the CLI passes its sampling defaults either way
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise TunelabError(f"temperature must be > 0 when sampling, got {temperature!r} (for greedy, don't sample)")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise TunelabError(f"top_p must be in (0, 1], got {top_p!r}")


def _forward_params(model: Any) -> set[str]:
    """Parameter names of the forward (of the base model for PEFT: its wrapper forwards **kwargs)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def cache_argument(model: Any) -> str | None:
    """The forward argument that takes the KV cache (``cache`` or ``past_key_values``), if any."""
    params = _forward_params(model)
    return next((name for name in _CACHE_NAMES if name in params), None)


def returned_cache(out: Any) -> Any:
    """The KV cache of a forward output, read from the field its class declares.

    Going by the declared fields never touches 5.24's deprecated ``past_key_values`` alias
    (which logs a warning), whichever argument name the forward took.
    """
    declared = {f.name for f in dataclasses.fields(out)} if dataclasses.is_dataclass(out) else set(dir(out))
    return getattr(out, next((name for name in _CACHE_NAMES if name in declared), "past_key_values"), None)


def _fallback_reason(model: Any) -> str | None:
    """Why ``_decode_batch`` can't drive this model (so HF ``generate`` must), or None if it can."""
    config = getattr(model, "config", None)
    if config is None:
        return "no model config"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return "PEFT prompt learning"  # prefix/prompt tuning inject their own cache through PEFT's generate
    if cache_argument(model) is None:
        return "forward takes neither `cache` nor `past_key_values`"
    missing = sorted({"attention_mask", "position_ids", "use_cache"} - _forward_params(model))
    return f"forward takes no {', '.join(f'`{m}`' for m in missing)}" if missing else None


def _own_loop_supported(model: Any) -> bool:
    """Whether ``_decode_batch`` can drive this model (else HF ``generate`` does)."""
    return _fallback_reason(model) is None


def decoder(model: Any) -> str:
    """The decoder :func:`generate` / :func:`generate_ids` run for ``model``.

    ``"tunelab"`` (:data:`OWN_DECODER`, the batched loop with cache pruning) or
    ``"hf-generate: <reason>"`` for the HF ``generate`` fallback, e.g.
    ``"hf-generate: encoder-decoder"``.
    """
    if _own_loop_supported(model):
        return OWN_DECODER
    return f"hf-generate: {_fallback_reason(model) or 'own loop disabled'}"


_warned: set[tuple[str, str]] = set()  # (model class, decoder) pairs already warned about in this process
_recording: ContextVar[set[str] | None] = ContextVar("tunelab_decoders", default=None)


@contextmanager
def record_decoders() -> Iterator[set[str]]:
    """Collect the decoders (as :func:`decoder` names them) that generation ran inside the block.

    ``with record_decoders() as used: ...`` leaves ``used`` empty when nothing was generated
    (multiple-choice tasks score log-likelihoods instead).
    """
    used: set[str] = set()
    token = _recording.set(used)
    try:
        yield used
    finally:
        _recording.reset(token)


def _note_decoder(model: Any, name: str) -> None:
    """Record the decoder for :func:`record_decoders`; warn once per model class and reason on a fallback."""
    used = _recording.get()
    if used is not None:
        used.add(name)
    key = (type(model).__name__, name)
    if name != OWN_DECODER and key not in _warned:
        _warned.add(key)
        logger.warning("%s: generating with HF generate instead of tunelab's batched decoder (%s); this is several "
                       "times slower", key[0], name.removeprefix("hf-generate: "))


def _decode_batch(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos: torch.Tensor,
    pad: int,
    sampler: _Sampler | None,
    on_step: StepCallback,
    first_step: FirstStep | None = None,
) -> list[list[int]]:
    """Prefill a left-padded batch, then decode from the KV cache; rows leave at EOS.

    Returns each row's new tokens before EOS. Positions come from the attention mask (as in HF
    generate), so a left-padded row sees the same positions as it would alone.
    """
    n = input_ids.shape[0]
    extra = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}
    cache_kwarg = cache_argument(model)
    assert cache_kwarg is not None  # decoder() sends models without one to HF generate
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **extra)
    next_position = position_ids[:, -1:] + 1
    rows = list(range(n))  # batch row → row of the results
    results: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=input_ids.device)  # only used when the cache can't shrink
    for step in range(max_new_tokens):
        scores = out.logits[:, -1].float()
        if step == 0 and first_step is not None:
            scores = first_step(scores)
        tokens = sampler.draw(scores) if sampler is not None else scores.argmax(-1)
        ended = torch.isin(tokens, eos) | done
        was_done = done.tolist()
        for row, token, stop in zip(rows, tokens.tolist(), ended.tolist()):
            if not stop:
                results[row].append(token)
        on_step(was_done.count(False), int(ended.sum()) - sum(was_done))
        if step + 1 == max_new_tokens or bool(ended.all()):
            break
        cache = returned_cache(out)
        if cache is None:
            raise RuntimeError(f"{type(model).__name__} returned no KV cache with use_cache=True")
        if isinstance(cache, Cache) and bool(ended.any()):
            # Drop finished rows everywhere: cache, mask, positions, generators.
            keep = (~ended).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            kept = keep.tolist()
            rows = [rows[k] for k in kept]
            attention_mask, next_position, tokens = attention_mask[keep], next_position[keep], tokens[keep]
            done = done[keep]
            if sampler is not None:
                sampler.keep(kept)
        elif not isinstance(cache, Cache):
            # A legacy cache we can't shrink: finished rows stay in the batch, fed padding.
            done = ended
            tokens = tokens.masked_fill(done, pad)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_position,
                    use_cache=True, **{cache_kwarg: cache}, **extra)
        next_position = next_position + 1
    return results


def _hf_generate_batch(
    model: Any,
    tokenizer: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos: list[int],
    pad: int,
    sampler: _Sampler | None,
    on_step: StepCallback,
    first_step: FirstStep | None = None,
) -> list[list[int]]:
    """The fallback: HF ``generate`` with a fully explicit config; returns new tokens before EOS."""
    bos = getattr(getattr(model, "generation_config", None), "bos_token_id", None)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
        bos_token_id=bos if bos is not None else tokenizer.bos_token_id, **_NEUTRAL_DECODING,
    )
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
        logits_processor=LogitsProcessorList(([_FirstStepProcessor(first_step, input_ids.shape[1])] if first_step else [])
                                             + ([sampler] if sampler is not None else [])),
    )
    results = []
    for new in output[:, input_ids.shape[1] :].tolist():
        cut = next((k for k, token in enumerate(new) if token in eos), len(new))
        results.append(new[:cut])
    on_step(sum(min(len(r) + 1, max_new_tokens) for r in results), len(results))
    return results


@torch.inference_mode()
def generate_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = True,
    bf16: bool = False,
    progress: bool = True,
    first_step: FirstStep | None = None,
) -> list[list[int]]:
    """Like :func:`generate`, but return each prompt's new token ids, cut before the first EOS.

    Which decoder runs: :func:`decoder`; to collect it from calls made deeper down, :func:`record_decoders`.
    """
    if not prompts:
        raise TunelabError("no prompts to generate from")
    _check_args(max_new_tokens, batch_size, do_sample, temperature, top_p)
    texts = render_prompts(tokenizer, prompts, chat)
    encoded = encode_texts(tokenizer, texts, chat)
    if any(not ids for ids in encoded):
        raise TunelabError("a prompt tokenizes to nothing; give it some text")
    # Longest first: batches of similar length pad little, and an out-of-memory shows at once.
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    eos, pad = _special_ids(model, tokenizer)
    device = next(model.parameters()).device
    eos_tensor = torch.tensor(eos, device=device)
    if do_sample:
        # Without a seed, draw one from torch's global RNG so torch.manual_seed still pins it.
        base_seed = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())
    used = decoder(model)
    own_loop = used == OWN_DECODER
    _note_decoder(model, used)
    results: list[list[int]] = [[] for _ in texts]
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(),
               TextColumn("prompts, {task.fields[tokens]} new tokens"), TimeElapsedColumn())
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar, autocast:
            task = bar.add_task("generating", total=len(texts), tokens=0)
            tokens_so_far = 0

            def on_step(new_tokens: int, finished: int) -> None:
                nonlocal tokens_so_far
                tokens_so_far += new_tokens
                bar.update(task, advance=finished, tokens=tokens_so_far)

            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                input_ids, attention_mask = pad_rows([encoded[i] for i in idx], pad)
                sampler = None
                if do_sample:
                    generators = [torch.Generator(device=device).manual_seed(prompt_seed(base_seed, i)) for i in idx]
                    sampler = _Sampler(float(temperature), float(top_p), generators)
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                if own_loop:
                    new = _decode_batch(model, input_ids, attention_mask, max_new_tokens, eos_tensor, pad, sampler,
                                        on_step, first_step)
                else:
                    new = _hf_generate_batch(model, tokenizer, input_ids, attention_mask, max_new_tokens, eos, pad,
                                             sampler, on_step, first_step)
                for i, tokens in zip(idx, new):
                    results[i] = tokens
                bar.update(task, completed=start + len(idx))  # rows that ran to max_new_tokens too
    finally:
        model.train(was_training)
    return results


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = True,
    bf16: bool = False,
    progress: bool = True,
    first_step: FirstStep | None = None,
) -> list[str]:
    """Complete every prompt; return the new text only (stripped), in the order given.

    ``prompts`` are strings or ``[{"role", "content"}, ...]`` message lists, rendered with the
    chat template unless ``chat=False``. Prompts are sorted by length into batches of
    ``batch_size`` and left-padded; each prompt stops at EOS or after ``max_new_tokens``
    tokens, and finished prompts leave the batch so the rest decode faster.

    Greedy unless ``do_sample``; then tokens are drawn after ``temperature`` scaling and
    nucleus (``top_p``) filtering, no top-k, with a per-prompt generator derived from
    ``seed`` — same seed, same samples, whatever the batching. The model's own
    ``generation_config`` contributes only its EOS/pad/BOS ids, never sampling settings or
    penalties. ``bf16`` runs under bf16 autocast: faster prefill on CPUs with AVX512-BF16,
    but greedy outputs can differ from fp32. The progress bar counts finished prompts and
    generated tokens. ``first_step`` rewrites the scores of the first new token only (refusal-token
    control, :class:`tunelab.safety.refusal_tokens.RefusalControl`); control tokens are special
    tokens, so they never show in the returned text.
    """
    ids = generate_ids(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
        temperature=temperature, top_p=top_p, seed=seed, chat=chat, bf16=bf16, progress=progress, first_step=first_step,
    )
    return [tokenizer.decode(new, skip_special_tokens=True).strip() for new in ids]
