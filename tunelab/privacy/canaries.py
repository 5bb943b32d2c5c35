"""Canaries for membership-inference audits of fine-tuning: a canary is a *prefix* (the prompt) and a *secret*
(the supervised response span), and a fair coin decides whether it is trained on (member) or held out.

Families (all share one tokenizer and one secret length ``L`` in tokens):

``random``          each secret token uniform over the non-special vocabulary.
``unigram``   uniform over the ``pool_size`` tokens the *model* finds least likely: the lowest mean
                    next-token log-prob, averaged over every position of up to 8 fine-tuning prompts
                    (rendered with the chat template and a generation prompt) when ``data_rows`` are
                    given, else over a single-token context (the tokenizer's BOS, or EOS when it has none).
``unigram-corpus``  uniform over the ``pool_size`` rarest tokens of the fine-tuning data (token counts over
                    every message's text; ties, e.g. all unseen tokens, broken by a seeded shuffle).
``bigram``          familiar tokens in an unseen order: the pool is the ``pool_size`` most frequent *contexts*
                    of the data's token stream, and each secret token is drawn among pool tokens that never
                    follow the previous token (the first one: never follow the prefix's last token) in the data.
                    Under the add-k bigram model of the data (:class:`BigramModel`) every such step costs
                    k / (c(prev) + k·V) < 1/V, i.e. less likely than a random token after an unseen context.
``new-token``       fresh tokens ``<canary_{n}>``, ``L`` of them per canary (``m·L`` in all), not in the vocabulary;
                    :attr:`CanarySet.new_tokens` lists them and :meth:`CanarySet.add_new_tokens` adds them to a
                    tokenizer + model the way refusal tokens are added (ids ``len(tokenizer) + n``, in order).

Every secret is checked against what training will actually tokenize: the canary's chat goes through
:func:`tunelab.data.tokenize_chat` and its supervised ids must start with the secret ids (a candidate token that
would merge with its neighbour is redrawn). Prefix styles: ``random`` (``prefix_len`` random word tokens) or
``data`` (a real prompt of the data set, so the canary looks like an ordinary record).

Membership is drawn *after* all canaries exist, by a fair coin from its own generator (``membership_seed``,
default ``seed``): changing the membership seed changes only who is a member. Secrets never appear in
``repr``/``str``; :meth:`CanarySet.show_secrets` prints them on purpose.

Training with canaries: :class:`tunelab.privacy.plugin.CanaryPlugin` (``tunelab train --canaries M``) makes the
set, inserts the members into the data, adds ``new-token`` tokens and audits the run at the end.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

FAMILIES = ("random", "unigram", "unigram-corpus", "bigram", "new-token")
PREFIX_STYLES = ("random", "data")
FORMAT = "tunelab-canaries"
VERSION = 1
DEFAULT_POOL_SIZE = 512
DEFAULT_PREFIX_LEN = 8
MODEL_CONTEXTS = 8  # prompts averaged over by unigram
_MAX_TRIES = 200  # redraws per secret before giving up
_WORD = re.compile(r"^Ġ[A-Za-z]{3,}$")


# --------------------------------------------------------------------------- data helpers
def _records(data_rows: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Records from a list of records or of ``(where, record)`` pairs (as ``tunelab.data.read_rows`` gives)."""
    out = []
    for row in data_rows or []:
        if isinstance(row, tuple) and len(row) == 2:
            row = row[1]
        if isinstance(row, dict):
            out.append(row)
    return out


def _texts(record: dict[str, Any]) -> list[str]:
    if isinstance(record.get("messages"), list):
        return [m["content"] for m in record["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return [record[k] for k in ("prompt", "response") if isinstance(record.get(k), str)]


def _prompt(record: dict[str, Any]) -> str | None:
    if isinstance(record.get("messages"), list):
        for m in record["messages"]:
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].strip():
                return m["content"]
        return None
    p = record.get("prompt")
    return p if isinstance(p, str) and p.strip() else None


def _token_streams(tokenizer: Any, records: list[dict[str, Any]]) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for r in records for t in _texts(r) if t]


def _ordinary_ids(tokenizer: Any) -> list[int]:
    """Token ids that are not special or added tokens."""
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in added]


@dataclass
class BigramModel:
    """Add-k bigram model of a token stream: P(b | a) = (c(a, b) + k) / (c(a) + k·V)."""

    pairs: Counter
    contexts: Counter
    vocab_size: int
    k: float = 1.0

    @classmethod
    def fit(cls, streams: Sequence[Sequence[int]], vocab_size: int, k: float = 1.0) -> BigramModel:
        pairs: Counter = Counter()
        for s in streams:
            pairs.update(itertools.pairwise(s))
        contexts: Counter = Counter()
        for (a, _), c in pairs.items():
            contexts[a] += c
        return cls(pairs, contexts, vocab_size, k)

    def logprob(self, a: int, b: int) -> float:
        return math.log((self.pairs.get((a, b), 0) + self.k) / (self.contexts.get(a, 0) + self.k * self.vocab_size))

    def sequence_logprob(self, ids: Sequence[int], context: int | None = None) -> float:
        """Sum of log P over the pairs of ``ids`` (plus the pair ``(context, ids[0])`` when given)."""
        seq = ([context] if context is not None else []) + list(ids)
        return sum(self.logprob(a, b) for a, b in itertools.pairwise(seq))


# --------------------------------------------------------------------------- canary set
@dataclass
class Canary:
    prefix: str
    secret: str
    secret_ids: list[int]
    member: bool = False

    def record(self) -> dict[str, str]:
        """The training record: the prefix is the prompt, the secret the supervised response."""
        return {"prompt": self.prefix, "response": self.secret}

    def __repr__(self) -> str:
        return f"Canary(member={self.member}, secret_len={len(self.secret_ids)}, <secret hidden>)"

    __str__ = __repr__


@dataclass
class CanarySet:
    family: str
    params: dict[str, Any]
    seed: int
    membership_seed: int
    canaries: list[Canary]
    new_tokens: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.canaries)

    @property
    def members(self) -> list[Canary]:
        return [c for c in self.canaries if c.member]

    @property
    def non_members(self) -> list[Canary]:
        return [c for c in self.canaries if not c.member]

    def records(self, members_only: bool = False) -> list[dict[str, str]]:
        return [c.record() for c in (self.members if members_only else self.canaries)]

    def __repr__(self) -> str:
        return (f"CanarySet(family={self.family!r}, m={len(self)}, members={len(self.members)}, "
                f"non_members={len(self.non_members)}, secret_len={self.params.get('secret_len')}, seed={self.seed}, "
                "secrets hidden)")

    __str__ = __repr__

    def show_secrets(self) -> str:
        """A readable listing *with* the secrets (for deliberate inspection only)."""
        lines = [repr(self)]
        for i, c in enumerate(self.canaries):
            lines.append(f"{i}\t{'member' if c.member else 'non-member'}\t{c.prefix!r}\t{c.secret!r}\t{c.secret_ids}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ new tokens
    def add_new_tokens(self, model: Any, tokenizer: Any) -> list[int]:
        """``new-token`` family: add :attr:`new_tokens` to ``tokenizer`` (and resize ``model`` if given, rows at the
        mean of the old rows, as refusal tokens do); return their ids, which must be the stored secret ids."""
        if not self.new_tokens:
            return []
        vocab = tokenizer.get_vocab()
        if any(t in vocab for t in self.new_tokens):
            raise TunelabError("the tokenizer already has canary tokens; add them to the base tokenizer only once")
        tokenizer.add_tokens(self.new_tokens, special_tokens=False)
        if model is not None:
            from tunelab.models import resize_for_tokenizer

            resize_for_tokenizer(model, tokenizer, self.new_tokens)
        ids = [int(i) for i in tokenizer.convert_tokens_to_ids(self.new_tokens)]
        expected = [i for c in self.canaries for i in c.secret_ids]
        if ids != expected:
            raise TunelabError("the canary tokens got other ids than when the set was made; use the tokenizer the set was made with")
        return ids

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "family": self.family, "params": self.params, "seed": self.seed,
                "membership_seed": self.membership_seed, "new_tokens": self.new_tokens,
                "canaries": [{"prefix": c.prefix, "secret": c.secret, "secret_ids": c.secret_ids, "member": c.member}
                             for c in self.canaries]}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CanarySet:
        path = Path(path)
        if not path.is_file():
            raise TunelabError(f"canary file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise TunelabError(f"{path}: not a canary set (not valid JSON)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TunelabError(f"{path}: not a canary set (no \"format\": \"{FORMAT}\")")
        try:
            canaries = [Canary(str(c["prefix"]), str(c["secret"]), [int(i) for i in c["secret_ids"]], bool(c["member"]))
                        for c in data["canaries"]]
            out = cls(str(data["family"]), dict(data["params"]), int(data["seed"]), int(data["membership_seed"]),
                      canaries, [str(t) for t in data.get("new_tokens", [])])
        except (KeyError, TypeError, ValueError):
            raise TunelabError(f"{path}: not a canary set (missing or malformed fields)") from None
        if out.family not in FAMILIES:
            raise TunelabError(f"{path}: not a canary set (unknown family '{out.family}')")
        return out


# --------------------------------------------------------------------------- secrets
def _in_context_ids(tokenizer: Any, prefix: str, secret: str) -> list[int]:
    """The ids training supervises for the record {prefix → secret} (the end-of-turn tokens included)."""
    if getattr(tokenizer, "chat_template", None):
        from tunelab.data import IGNORE_INDEX, tokenize_chat

        ex = tokenize_chat([{"role": "user", "content": prefix}, {"role": "assistant", "content": secret}], tokenizer, 10**9)
        return [t for t in ex.labels if t != IGNORE_INDEX]
    return tokenizer(secret, add_special_tokens=False)["input_ids"]


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)


def _stable(tokenizer: Any, ids: list[int]) -> bool:
    text = _decode(tokenizer, ids)
    return tokenizer(text, add_special_tokens=False)["input_ids"] == ids


def _draw_secret(rng: random.Random, tokenizer: Any, secret_len: int, choose) -> list[int]:
    """Grow a secret token by token; a token whose text would re-tokenize differently is redrawn."""
    for _ in range(_MAX_TRIES):
        ids: list[int] = []
        for _pos in range(secret_len):
            for _try in range(_MAX_TRIES):
                t = choose(rng, ids)
                if t is not None and _stable(tokenizer, ids + [t]):
                    ids.append(t)
                    break
            else:
                break
        if len(ids) == secret_len and _decode(tokenizer, ids).strip():
            return ids
    raise TunelabError(f"could not draw a secret of {secret_len} tokens that re-tokenizes to itself; "
                       "try a larger pool or a shorter secret")


def _model_logprobs(model: Any, tokenizer: Any, records: list[dict[str, Any]]):
    """Mean next-token log-probs over the positions of up to MODEL_CONTEXTS prompts (or one BOS/EOS token)."""
    import torch

    contexts: list[list[int]] = []
    for r in records:
        p = _prompt(r)
        if p is None:
            continue
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        contexts.append(list(ids)[:256])
        if len(contexts) == MODEL_CONTEXTS:
            break
    if not contexts:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        contexts = [[int(start)]]
    device = next(model.parameters()).device
    total, n = None, 0
    with torch.no_grad():
        for ids in contexts:
            logits = model(torch.tensor([ids], device=device)).logits[0].float()
            lp = torch.log_softmax(logits, -1).sum(0)
            total = lp if total is None else total + lp
            n += len(ids)
    return (total / n).cpu()


def _chooser(family: str, tokenizer: Any, records: list[dict[str, Any]], model: Any, pool_size: int,
             gen: random.Random, ctx_of: dict[str, int | None]):
    """A function (rng, ids so far) → next candidate token id, for ``family``."""
    ordinary = _ordinary_ids(tokenizer)
    if family == "random":
        return lambda rng, ids: rng.choice(ordinary)
    if family == "unigram":
        mean_lp = _model_logprobs(model, tokenizer, records)
        ranked = sorted((i for i in ordinary if i < mean_lp.shape[0]), key=lambda i: (float(mean_lp[i]), i))
        pool = ranked[:pool_size]
        return lambda rng, ids: rng.choice(pool)
    streams = _token_streams(tokenizer, records)
    if family == "unigram-corpus":
        counts = Counter(t for s in streams for t in s)
        shuffled = list(ordinary)
        gen.shuffle(shuffled)  # seeded tie-break among equal counts (most tokens are unseen)
        pool = sorted(shuffled, key=lambda i: counts.get(i, 0))[:pool_size]
        return lambda rng, ids: rng.choice(pool)
    if family == "bigram":
        bigram = BigramModel.fit(streams, len(tokenizer))
        ordinary_set = set(ordinary)
        pool = [a for a, _ in sorted(bigram.contexts.items(), key=lambda kv: (-kv[1], kv[0])) if a in ordinary_set][:pool_size]
        if len(pool) < 2:
            raise TunelabError("bigram canaries need data with at least 2 distinct tokens that are followed by another")
        followers: dict[int, set[int]] = {}
        for a, b in bigram.pairs:
            followers.setdefault(a, set()).add(b)

        def choose(rng: random.Random, ids: list[int]) -> int | None:
            prev = ids[-1] if ids else ctx_of.get("last")
            seen = followers.get(prev, set()) if prev is not None else set()
            for _ in range(64):
                t = rng.choice(pool)
                if t not in seen:
                    return t
            return None

        return choose
    raise AssertionError(family)


# --------------------------------------------------------------------------- public API
def make_canaries(family: str, m: int, secret_len: int, seed: int, tokenizer: Any, *, data_rows: Sequence[Any] | None = None,
                  model: Any = None, prefix_style: str = "random", membership_seed: int | None = None,
                  pool_size: int = DEFAULT_POOL_SIZE, prefix_len: int = DEFAULT_PREFIX_LEN) -> CanarySet:
    """``m`` canaries of ``family`` with secrets of ``secret_len`` tokens, deterministic in ``seed``; then a fair coin
    per canary (its own generator, ``membership_seed`` or ``seed``) marks it member (trained) or non-member."""
    if family not in FAMILIES:
        raise TunelabError(f"unknown canary family '{family}'; choose one of: {', '.join(FAMILIES)}")
    if prefix_style not in PREFIX_STYLES:
        raise TunelabError(f"unknown canary prefix style '{prefix_style}'; choose one of: {', '.join(PREFIX_STYLES)}")
    if not isinstance(m, int) or m < 2:
        raise TunelabError(f"need at least 2 canaries (members and non-members), got m={m}")
    if not isinstance(secret_len, int) or secret_len < 1:
        raise TunelabError(f"canary secret length must be >= 1 token, got {secret_len}")
    if not isinstance(pool_size, int) or pool_size < 2:
        raise TunelabError(f"canary pool size must be >= 2, got {pool_size}")
    if not isinstance(prefix_len, int) or prefix_len < 1:
        raise TunelabError(f"canary prefix length must be >= 1 token, got {prefix_len}")
    records = _records(data_rows)
    if family in ("bigram", "unigram-corpus") and not records:
        raise TunelabError(f"{family} canaries need the fine-tuning data (data_rows)")
    if family == "unigram" and model is None:
        raise TunelabError("unigram canaries need the model (model=...)")
    prompts = [p for p in map(_prompt, records) if p is not None]
    if prefix_style == "data" and not prompts:
        raise TunelabError("prefix style 'data' needs the fine-tuning data (data_rows with prompts)")

    gen = random.Random(f"tunelab-canaries:{family}:{seed}")
    words = [i for i in _ordinary_ids(tokenizer) if _WORD.match(tokenizer.convert_ids_to_tokens(i) or "")]
    if prefix_style == "random" and len(words) < 2:
        words = _ordinary_ids(tokenizer)

    def prefix() -> str:
        if prefix_style == "data":
            return gen.choice(prompts)
        for _ in range(_MAX_TRIES):
            text = _decode(tokenizer, [gen.choice(words) for _ in range(prefix_len)]).strip()
            if text:
                return text
        raise TunelabError("could not draw a random canary prefix")

    ctx: dict[str, int | None] = {"last": None}
    canaries: list[Canary] = []
    new_tokens: list[str] = []
    if family == "new-token":
        base = len(tokenizer)
        vocab = tokenizer.get_vocab()
        n = 0
        for _ in range(m):
            toks = []
            while len(toks) < secret_len:
                tok = f"<canary_{n}>"
                n += 1
                if tok not in vocab:
                    toks.append(tok)
            ids = list(range(base + len(new_tokens), base + len(new_tokens) + secret_len))
            new_tokens += toks
            canaries.append(Canary(prefix(), "".join(toks), ids))
    else:
        choose = _chooser(family, tokenizer, records, model, pool_size, gen, ctx)
        seen: set[tuple[int, ...]] = set()
        while len(canaries) < m:
            p = prefix()
            pids = tokenizer(p, add_special_tokens=False)["input_ids"]
            ctx["last"] = pids[-1] if pids else None
            for _ in range(_MAX_TRIES):
                ids = _draw_secret(gen, tokenizer, secret_len, choose)
                secret = _decode(tokenizer, ids)
                if tuple(ids) not in seen and _in_context_ids(tokenizer, p, secret)[:secret_len] == ids:
                    break
            else:
                raise TunelabError(f"could not draw {m} distinct {family} secrets of {secret_len} tokens")
            seen.add(tuple(ids))
            canaries.append(Canary(p, secret, ids))

    ms = seed if membership_seed is None else membership_seed
    coin = random.Random(f"tunelab-canaries-membership:{ms}")
    for c in canaries:
        c.member = coin.random() < 0.5
    params = {"m": m, "secret_len": secret_len, "prefix_style": prefix_style, "pool_size": pool_size,
              "prefix_len": prefix_len, "n_data_rows": len(records), "model": _model_name(model)}
    return CanarySet(family, params, seed, ms, canaries, new_tokens)


def _model_name(model: Any) -> str | None:
    if model is None:
        return None
    return getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__


def insert_members(chats_or_rows: Sequence[Any], canary_set: CanarySet, seed: int) -> list[Any]:
    """A new list: the user's items in their order, with each member canary inserted once at a seeded random position.

    The canaries take the items' shape: chats (lists of messages), ``(where, record)`` pairs, or plain records.
    Non-members are not inserted.
    """
    from tunelab.data import validate_record

    items = list(chats_or_rows)
    first = items[0] if items else None
    members = [(i, c) for i, c in enumerate(canary_set.canaries) if c.member]

    def shaped(i: int, c: Canary) -> Any:
        if isinstance(first, list):
            return validate_record(c.record(), f"canary {i}")
        if isinstance(first, tuple):
            return (f"canary:{i}", c.record())
        return c.record()

    rng = random.Random(f"tunelab-canaries-insert:{seed}")
    order = list(members)
    rng.shuffle(order)
    slots = sorted(rng.sample(range(len(items) + len(order)), len(order)))
    out: list[Any] = []
    it = iter(items)
    k = 0
    for pos in range(len(items) + len(order)):
        if k < len(slots) and slots[k] == pos:
            out.append(shaped(*order[k]))
            k += 1
        else:
            out.append(next(it))
    return out
