from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.data import IGNORE_INDEX, Collator, length_grouped_batches, read_records, tokenize_chat, tokenize_records
from tunelab.errors import TunelabError

ROWS = [{"prompt": "Say hi", "response": "hi"}, {"prompt": "Say yo", "response": "yo"}]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_reads_jsonl_csv_parquet_and_hf_disk(tmp_path: Path):
    import pandas as pd
    from datasets import Dataset

    expected = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}] for r in ROWS]
    assert read_records(_write_jsonl(tmp_path / "d.jsonl", ROWS)) == expected
    pd.DataFrame(ROWS).to_csv(tmp_path / "d.csv", index=False)
    assert read_records(tmp_path / "d.csv") == expected
    pd.DataFrame(ROWS).to_parquet(tmp_path / "d.parquet")
    assert read_records(tmp_path / "d.parquet") == expected
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "hf"))
    assert read_records(tmp_path / "hf") == expected


def test_messages_records_are_accepted(tmp_path: Path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert read_records(_write_jsonl(tmp_path / "m.jsonl", [{"messages": chat}])) == [chat]


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ([ROWS[0], "{not json"], r"m\.jsonl:2: malformed JSON"),
        ([ROWS[0], {"prompt": "only a prompt"}], r"m\.jsonl:2: field 'response' missing"),
        ([{"prompt": "", "response": "x"}], r"m\.jsonl:1: field 'prompt' must be a non-empty string"),
        ([{"messages": [{"role": "user", "content": "no answer"}]}], r"m\.jsonl:1: .*no assistant turn"),
        ([{"messages": [{"role": "robot", "content": "x"}]}], r"m\.jsonl:1: messages\[0\]\.role"),
        ([[1, 2]], r"m\.jsonl:1: record is a list"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, rows: list, pattern: str):
    with pytest.raises(TunelabError, match=pattern):
        read_records(_write_jsonl(tmp_path / "m.jsonl", rows))


def test_missing_and_empty_files(tmp_path: Path):
    with pytest.raises(TunelabError, match="data file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TunelabError, match="empty"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(TunelabError, match="unknown data format"):
        read_records(tmp_path / "x.txt")


def test_loss_covers_exactly_the_assistant_turn(tiny):
    _, tok = tiny
    chat = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    ex = tokenize_chat(chat, tok, max_length=512)
    supervised = [t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX]
    assert tok.decode(supervised) == "4<|im_end|>\n"
    full = tok.apply_chat_template(chat, tokenize=False)
    assert tok.decode(ex.input_ids) == full
    # the prompt part is exactly what generation would be fed
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    n_prompt = ex.labels.index(next(label for label in ex.labels if label != IGNORE_INDEX))
    assert tok.decode(ex.input_ids[:n_prompt]) == prompt


def test_multi_turn_supervises_every_assistant_turn(tiny):
    _, tok = tiny
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    ex = tokenize_chat(chat, tok, max_length=512)
    supervised = tok.decode([t for t, label in zip(ex.input_ids, ex.labels) if label != IGNORE_INDEX])
    assert supervised == "b<|im_end|>\nd<|im_end|>\n"


def test_truncation_drops_examples_without_response(tiny):
    _, tok = tiny
    chats = [[{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "x"}]]
    kept, dropped = tokenize_records(chats, tok, max_length=10)
    assert kept == [] and dropped == 1
    kept, dropped = tokenize_records(chats, tok, max_length=512)
    assert len(kept) == 1 and dropped == 0 and len(kept[0].input_ids) <= 512


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=200), batch_size=st.integers(1, 16), seed=st.integers(0, 10**6))
def test_length_grouping_is_a_deterministic_partition(lengths: list[int], batch_size: int, seed: int):
    batches = length_grouped_batches(lengths, batch_size, seed, epoch=0)
    assert batches == length_grouped_batches(lengths, batch_size, seed, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(b) <= batch_size for b in batches)


def test_length_grouping_pads_less_than_random_batches():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(10, 400) for _ in range(2000)]

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    grouped = length_grouped_batches(lengths, 8, seed=0, epoch=0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    plain = [order[i : i + 8] for i in range(0, len(order), 8)]
    assert padded(grouped) < 0.7 * padded(plain)


def test_collator_pads_right_and_masks_padding(tiny):
    _, tok = tiny
    chats = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
             [{"role": "user", "content": "a much longer question here"}, {"role": "assistant", "content": "ok"}]]
    examples, _ = tokenize_records(chats, tok, 512)
    batch = Collator(examples, tok.pad_token_id)([0, 1])
    n0 = len(examples[0].input_ids)
    assert batch["attention_mask"][0, :n0].all() and not batch["attention_mask"][0, n0:].any()
    assert (batch["labels"][0, n0:] == IGNORE_INDEX).all()
