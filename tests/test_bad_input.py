"""Bad user input through the CLI: one line naming the file (and line/field), a non-zero exit, no traceback.

Runs ``tunelab.cli.main`` in-process (what the console script runs) so each case costs milliseconds;
every error here fires before a model is loaded. One case also goes through the installed
``tunelab`` script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.cli import main
from tunelab.configs import _NUMBER, from_sources
from tunelab.evaluate.runner import EvalConfig
from tunelab.layout import COMPACT_FILE, MASK_FILE, PEFT_CONFIG, PEFT_WEIGHTS, RUN_FILE
from tunelab.train.config import TrainConfig

GOOD = {"prompt": "What is 1 plus 2?", "response": "3"}
GOOD_LINE = (json.dumps(GOOD) + "\n").encode()
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


# --------------------------------------------------------------------------- helpers
def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """``tunelab ARGS`` in-process through ``main()``; return (exit code, stdout + stderr)."""
    capsys.readouterr()  # drop anything an earlier call left
    old_argv = sys.argv
    sys.argv = ["tunelab", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_one_line(code: int, output: str, *fragments: str) -> str:
    """A non-zero exit with exactly one line, ``error: ...``, holding every fragment."""
    lines = output.strip().splitlines()
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "tiny-random", "--data", str(data), "--output", str(out), *extra]


def eval_args(adapter: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "tiny-random", "--adapter", str(adapter), "--task", "arithmetic", "--limit", "1", *extra]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, real PEFT LoRA adapter on tiny-random (plus a tunelab.json), built without training."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_model

    model, _ = load_model("tiny-random")  # its own copy: get_peft_model wraps the model in place
    out = tmp_path_factory.mktemp("adapter") / "lora"
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)
    (out / RUN_FILE).write_text(json.dumps({"method": "lora", "base_model": "tiny-random"}))
    return out


@pytest.fixture
def adapter(adapter_dir: Path, tmp_path: Path) -> Path:
    """A fresh copy of the adapter, for a test to break."""
    return Path(shutil.copytree(adapter_dir, tmp_path / "adapter"))


@pytest.fixture
def task_vector_run(tmp_path: Path, tiny: tuple[Any, Any]) -> Path:
    """A LoTA-style run dir: tunelab.json + a small sparse task vector on tiny-random."""
    from tunelab.adapters.storage import TASK_VECTOR_FILE, save_task_vector

    weight = dict(tiny[0].named_parameters())[Q_PROJ]
    delta = torch.zeros_like(weight)
    delta[0, :3] = 0.01
    run = tmp_path / "lota"
    run.mkdir()
    save_task_vector({Q_PROJ: delta}, run / TASK_VECTOR_FILE, {"base_model": "tiny-random"})
    (run / RUN_FILE).write_text(json.dumps({"method": "lota", "base_model": "tiny-random"}))
    return run


def _truncate(path: Path, n: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:n])


# --------------------------------------------------------------------------- data files
@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("data.jsonl", GOOD_LINE * 2 + b'\xff\xfe{"prompt": 1}\n', ["data.jsonl:3: not UTF-8 text (byte 0xff at column 1)"]),
        ("mid.jsonl", GOOD_LINE + b'{"prompt": "caf\xe9", "response": "x"}\n', ["mid.jsonl:2: not UTF-8 text (byte 0xe9 at column 16)"]),
        ("utf16.jsonl", json.dumps(GOOD).encode("utf-16"), ["utf16.jsonl:1: not UTF-8", "UTF-16"]),
        ("deep.jsonl", b"[" * 100_000 + b"\n", ["deep.jsonl:1: JSON nested too deeply"]),
        ("list.json", b'[{"prompt": "a", "response": "b"},\n {"prompt": "\xc3\x28"}]', ["list.json:2: not UTF-8 text (byte 0xc3 at column 14)"]),
        ("obj.json", b'{"prompt": "a", "response": "b"}', ["obj.json: a .json data file must hold a list of records, got an object"]),
        ("bad.csv", b"prompt,response\nhi,there\nbad,\x80\n", ["bad.csv:3: not UTF-8 text (byte 0x80 at column 5)"]),
        ("extra.csv", b"prompt,response\nWhat is 1,2?,3\n", ["extra.csv:2: 3 fields, but the header has 2"]),
        ("huge.csv", b"prompt,response\nhi," + b"x" * 200_000 + b"\n", ["huge.csv:2: malformed CSV (field larger than field limit"]),
        ("junk.parquet", b"PAR1 definitely not parquet", ["junk.parquet: not a readable Parquet file"]),
    ],
)
def test_bad_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: bytes, fragments: list[str]):
    path = tmp_path / name
    path.write_bytes(content)
    assert_one_line(*run_cli(capsys, *train_args(path, tmp_path / "out")), str(tmp_path) + "/", *fragments)
    assert not (tmp_path / "out").exists()


def test_utf8_bom_is_fine(tmp_path: Path):
    from tunelab.data import read_records

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_LINE * 2)
    assert len(read_records(path)) == 2


def test_broken_saved_dataset_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    from datasets import Dataset

    ds_dir = tmp_path / "ds"
    Dataset.from_list([GOOD, GOOD]).save_to_disk(str(ds_dir))
    (ds_dir / "state.json").write_text("{not json")
    assert_one_line(*run_cli(capsys, *train_args(ds_dir, tmp_path / "out")), f"{ds_dir}: not a readable saved dataset")


# Any bytes spliced into line 2 of a good file: either still fine (then the unknown model stops the
# run before anything trains), or one line naming the file and the first bad line.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(min_size=1, max_size=12), at=st.integers(min_value=0, max_value=len(GOOD_LINE) - 1))
def test_any_bytes_in_a_data_file_give_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, junk: bytes, at: int):
    path = tmp_path / "fuzz.jsonl"
    line2 = GOOD_LINE[:at] + junk + GOOD_LINE[at:]
    path.write_bytes(GOOD_LINE + line2 + GOOD_LINE)
    args = ["train", "--model", "no-such-model", "--data", str(path), "--output", str(tmp_path / "out")]
    message = assert_one_line(*run_cli(capsys, *args))
    content = path.read_bytes()
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:  # junk holding b"\n" moves the bad byte to a later line
        bad = content.count(b"\n", 0, exc.start) + 1
        # Lines are read in order: an earlier line may already fail as JSON; the non-UTF-8 line
        # itself is always reported as such.
        named = re.search(re.escape(str(path)) + r":(\d+): ", message)
        assert named, message
        assert int(named.group(1)) <= bad
        if int(named.group(1)) == bad:
            assert "not UTF-8 text" in message
    else:
        assert f"{path}:" in message or "unknown model 'no-such-model'" in message


# --------------------------------------------------------------------------- YAML configs
@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: tiny-random\nlr: fast\n", "run.yaml:2: lr: expected a number, got 'fast'"),
        ("rank: true\n", "run.yaml:1: rank: expected an integer, got true"),
        ("rank: 2.5\n", "run.yaml:1: rank: expected an integer, got 2.5"),
        ("epochs: null\n", "run.yaml:1: epochs: expected an integer, got null"),
        ("bf16: 1\n", "run.yaml:1: bf16: expected true or false, got 1"),
        ("target_modules: q_proj\n", "run.yaml:1: target_modules: expected a list of strings, got 'q_proj'"),
        ("target_modules:\n  - q_proj\n  - 7\n", "run.yaml:3: target_modules[1]: expected a string, got 7"),
        ("dropout: {p: 0.1}\n", "run.yaml:1: dropout: expected a number, got a mapping"),
        ("sparsity: .nan\n", "run.yaml:1: sparsity: expected a number, got nan"),
        ("model: 135\n", "run.yaml:1: model: expected a string, got 135"),
        ("lr: 1\nlr: 2\n", "run.yaml:2: option 'lr' is given twice"),
        ("rank: 4\nrnak: 4\n", "run.yaml:2: unknown option 'rnak'"),
        ("- rank\n", "run.yaml:1: a config must be a mapping of option: value"),
        ("rank: [4\n", "run.yaml:2: malformed YAML"),
        ("rank: !!python/name:os.system 4\n", "run.yaml:1: malformed YAML"),
        ("model: a\x07b\n", "run.yaml:1: malformed YAML (control character U+0007"),
    ],
)
def test_bad_train_config(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, fragment: str):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert_one_line(*run_cli(capsys, "train", "--config", cfg), f"{tmp_path}/{fragment}")


def test_config_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"rank: 4\nmodel: caf\xe9\n")
    assert_one_line(*run_cli(capsys, "train", "--config", cfg), f"{cfg}:2: not UTF-8 text (byte 0xe9 at column 11)")


def test_eval_config_list_of_ints(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("task: arithmetic\nks:\n  - 1\n  - two\n")
    assert_one_line(*run_cli(capsys, "eval", "--config", cfg), f"{cfg}:4: ks[1]: expected an integer, got 'two'")


def test_config_types_are_coerced(tmp_path: Path):
    """Ints are fine for float fields (and become floats), `1e-4` is a number, YAML merge keys work."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: d.jsonl\noutput: out\nalpha: 16\nlr: 1e-4\n<<: {rank: 4}\n")
    loaded = from_sources(TrainConfig, cfg)
    assert loaded.alpha == 16.0 and isinstance(loaded.alpha, float) and loaded.lr == 1e-4 and loaded.rank == 4


def test_python_overrides_are_checked_too():
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match=r"^--batch-size: expected an integer, got '8'$"):
        from_sources(TrainConfig, None, data="d.jsonl", output="out", batch_size="8")


def _numeric_fields(cls: type) -> dict[str, tuple[type, bool]]:
    """``{field: (int or float, optional)}`` for a config class, from its type hints."""
    import types
    import typing

    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        if base in (int, float):
            out[name] = (base, type(None) in args)
    return out


def _wrong_values(kind: type, optional: bool) -> st.SearchStrategy[Any]:
    """Values of the wrong type for an int/float field, as YAML can express them."""
    text = st.text(alphabet=string.ascii_letters + string.digits + " -_.", min_size=1, max_size=12)
    if kind is float:
        text = text.filter(lambda s: not _NUMBER.fullmatch(s.strip()))  # `1e-4` is a number there
    choices = [text, st.booleans(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=4), st.integers(), min_size=1, max_size=2)]
    if kind is int:
        choices.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)))
    if not optional:
        choices.append(st.none())
    return st.one_of(choices)


def _field_and_value(cls: type) -> st.SearchStrategy[tuple[str, Any]]:
    fields = _numeric_fields(cls)
    return st.sampled_from(sorted(fields)).flatmap(lambda name: st.tuples(st.just(name), _wrong_values(*fields[name])))


def _fuzz_config(capsys: pytest.CaptureFixture[str], path: Path, command: list[str], field: str, value: Any, base: dict[str, Any]) -> None:
    # The field goes last, after a few good options, so its line number is not trivially 1.
    text = yaml.safe_dump(base, sort_keys=False) + yaml.safe_dump({field: value}, sort_keys=False)
    path.write_text(text)
    line = len(yaml.safe_dump(base, sort_keys=False).splitlines()) + 1
    assert_one_line(*run_cli(capsys, *command, "--config", path), f"{path}:{line}: {field}: expected ")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field_value=_field_and_value(TrainConfig))
def test_wrong_typed_train_numbers_give_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, field_value: tuple[str, Any]):
    base = {"model": "no-such-model", "data": str(tmp_path / "d.jsonl"), "output": str(tmp_path / "out")}
    _fuzz_config(capsys, tmp_path / "run.yaml", ["train"], *field_value, base)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field_value=_field_and_value(EvalConfig))
def test_wrong_typed_eval_numbers_give_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, field_value: tuple[str, Any]):
    base = {"model": "no-such-model", "task": "arithmetic"}
    _fuzz_config(capsys, tmp_path / "eval.yaml", ["eval"], *field_value, base)


# --------------------------------------------------------------------------- adapter dirs
def test_truncated_adapter_weights(capsys: pytest.CaptureFixture[str], adapter: Path):
    _truncate(adapter / PEFT_WEIGHTS)
    assert_one_line(*run_cli(capsys, *eval_args(adapter)),
                    f"{adapter / PEFT_WEIGHTS}: not a readable safetensors file (invalid header length)")


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        (PEFT_CONFIG, '{"r": 2,\n "lora_alpha": }', f"{PEFT_CONFIG}:2: malformed JSON"),
        (PEFT_CONFIG, "[1, 2]", f"{PEFT_CONFIG}: expected an object at the top level, got a list"),
        (PEFT_CONFIG, '{"peft_type": "LORA", "r": "2"}', f"{PEFT_CONFIG}: field 'r' must be an integer, got a string"),
        (RUN_FILE, "{oops", f"{RUN_FILE}:1: malformed JSON"),
        (RUN_FILE, b'{"method": "\xff"}', f"{RUN_FILE}:1: not UTF-8 text (byte 0xff at column 13)"),
        ("tokenizer_config.json", "{", "tokenizer_config.json:1: malformed JSON"),
    ],
)
def test_malformed_adapter_json(capsys: pytest.CaptureFixture[str], adapter: Path, name: str, content: str | bytes, fragment: str):
    (adapter / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line(*run_cli(capsys, *eval_args(adapter)), f"{adapter}/{fragment}")


def test_broken_task_vector(capsys: pytest.CaptureFixture[str], task_vector_run: Path):
    from tunelab.adapters.storage import TASK_VECTOR_FILE

    _truncate(task_vector_run / TASK_VECTOR_FILE)
    assert_one_line(*run_cli(capsys, *eval_args(task_vector_run)),
                    f"{task_vector_run / TASK_VECTOR_FILE}: not a readable safetensors file")


def test_task_vector_with_corrupt_metadata(capsys: pytest.CaptureFixture[str], task_vector_run: Path):
    from tunelab.adapters.storage import TASK_VECTOR_FILE, TASK_VECTOR_FORMAT, atomic_save_file

    file = task_vector_run / TASK_VECTOR_FILE
    atomic_save_file({f"{Q_PROJ}.indices": torch.tensor([0]), f"{Q_PROJ}.values": torch.tensor([1.0])}, file,
                     {"format": TASK_VECTOR_FORMAT, "shapes": "{not json"})
    assert_one_line(*run_cli(capsys, *eval_args(task_vector_run)), f"{file}: metadata 'shapes' is not valid JSON")


def test_compact_file_with_corrupt_metadata(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    from tunelab.adapters.storage import COMPACT_FORMAT, atomic_save_file

    run = tmp_path / "lori-s"
    run.mkdir()
    atomic_save_file({"x.values": torch.zeros(1)}, run / COMPACT_FILE,
                     {"format": COMPACT_FORMAT, "a_seed": "1", "adapter_config": "{}", "modules": '{"x": {"a_shape": [2]}}'})
    assert_one_line(*run_cli(capsys, "unpack", run, "--output", tmp_path / "out"), f"{run / COMPACT_FILE}: corrupt compact adapter")
    _truncate(run / COMPACT_FILE, 50)
    assert_one_line(*run_cli(capsys, "unpack", run, "--output", tmp_path / "out"), f"{run / COMPACT_FILE}: not a readable safetensors file")


# --------------------------------------------------------------------------- merge sources
def test_merge_truncated_source(capsys: pytest.CaptureFixture[str], adapter: Path, adapter_dir: Path, tmp_path: Path):
    _truncate(adapter / PEFT_WEIGHTS)
    args = ["merge", adapter_dir, adapter, "--output", tmp_path / "merged", "--weights", "0.5,0.5"]
    assert_one_line(*run_cli(capsys, *args), f"{adapter / PEFT_WEIGHTS}: not a readable safetensors file")


def test_merge_source_with_wrongly_typed_config(capsys: pytest.CaptureFixture[str], adapter: Path, adapter_dir: Path, tmp_path: Path):
    config = json.loads((adapter / PEFT_CONFIG).read_text())
    (adapter / PEFT_CONFIG).write_text(json.dumps({**config, "lora_alpha": "4"}))
    args = ["merge", adapter_dir, adapter, "--output", tmp_path / "merged", "--weights", "0.5,0.5"]
    assert_one_line(*run_cli(capsys, *args), f"{adapter / PEFT_CONFIG}: field 'lora_alpha' must be a number, got a string")


def test_merge_source_with_mismatched_mask(capsys: pytest.CaptureFixture[str], adapter: Path, adapter_dir: Path, tmp_path: Path):
    from tunelab.adapters.storage import save_masks

    save_masks({"model.layers.0.self_attn.q_proj": torch.ones(3, 3, dtype=torch.bool)}, adapter / MASK_FILE)
    args = ["merge", adapter_dir, adapter, "--output", tmp_path / "merged", "--weights", "0.5,0.5"]
    assert_one_line(*run_cli(capsys, *args), f"{adapter / MASK_FILE}: mask of model.layers.0.self_attn.q_proj is (3, 3)")


def test_merge_task_vector_with_indices_out_of_range(capsys: pytest.CaptureFixture[str], task_vector_run: Path, tmp_path: Path):
    from tunelab.adapters.storage import TASK_VECTOR_FILE, TASK_VECTOR_FORMAT, atomic_save_file

    file = task_vector_run / TASK_VECTOR_FILE
    atomic_save_file({f"{Q_PROJ}.indices": torch.tensor([10**9]), f"{Q_PROJ}.values": torch.tensor([1.0])}, file,
                     {"format": TASK_VECTOR_FORMAT, "shapes": json.dumps({Q_PROJ: [64, 64]})})
    args = ["merge", task_vector_run, task_vector_run, "--method", "task-arithmetic", "--output", tmp_path / "m", "--weights", "1,1"]
    assert_one_line(*run_cli(capsys, *args), f"{file}: corrupt task vector (indices of {Q_PROJ} do not fit")


# --------------------------------------------------------------------------- prompts files and model dirs
def test_prompts_file_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"Hello\nBonjour \xe0 tous\n")
    args = ["generate", "--model", "tiny-random", "--prompts-file", prompts, "--max-new-tokens", "1"]
    assert_one_line(*run_cli(capsys, *args), f"{prompts}:2: not UTF-8 text (byte 0xe0 at column 9)")


def test_safety_prompts_jsonl_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    prompts = tmp_path / "harmful.jsonl"
    prompts.write_bytes(b'{"prompt": "x"}\n{"prompt": "\xff"}\n')
    args = ["eval", "--model", "tiny-random", "--suite", "safety", "--harmful-prompts", prompts, "--limit", "1"]
    assert_one_line(*run_cli(capsys, *args), f"{prompts}:2: not UTF-8 text")


def test_safety_prompts_txt_not_utf8(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    prompts = tmp_path / "harmful.txt"
    prompts.write_bytes(b"first\n\xff second\n")
    args = ["eval", "--model", "tiny-random", "--suite", "safety", "--harmful-prompts", prompts, "--limit", "1"]
    assert_one_line(*run_cli(capsys, *args), f"{prompts}:2: not UTF-8 text")


@pytest.mark.parametrize(
    "name, breakage, fragment",
    [
        ("config.json", b'{"model_type": "llama",\n', "config.json:2: malformed JSON"),
        ("tokenizer.json", b"\x00\x01", "tokenizer.json:1: malformed JSON"),
        ("model.safetensors", None, "model.safetensors: not a readable safetensors file"),
    ],
)
def test_broken_model_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, breakage: bytes | None, fragment: str):
    from tunelab.models import resolve_model_path

    model_dir = Path(shutil.copytree(resolve_model_path("tiny-random"), tmp_path / "model"))
    if breakage is None:
        _truncate(model_dir / name)
    else:
        (model_dir / name).write_bytes(breakage)
    args = ["generate", "hi", "--model", model_dir, "--max-new-tokens", "1"]
    assert_one_line(*run_cli(capsys, *args), f"{model_dir}/{fragment}")


# --------------------------------------------------------------------------- the real console script
def test_console_script_prints_one_line(adapter: Path):
    """The installed ``tunelab`` on a truncated adapter (failure 3 as first reported; 1 and 2 are
    covered in-process above: the same ``main()``, without paying the torch import again)."""
    _truncate(adapter / PEFT_WEIGHTS)
    exe = Path(sys.executable).parent / "tunelab"
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "tunelab.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "60"}  # narrow: the line must still not wrap
    proc = subprocess.run([*command, *eval_args(adapter)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: {adapter / PEFT_WEIGHTS}: not a readable safetensors file (invalid header length)"


# --------------------------------------------------------------------------- earlier runs a command builds on
@pytest.mark.parametrize("name, flag", [(RUN_FILE, "--init-from"), ("adapter_config.json", "--init-from"),
                                        (RUN_FILE, "--mask-from")])
def test_malformed_earlier_run(capsys: pytest.CaptureFixture[str], adapter: Path, tmp_path: Path, name: str, flag: str):
    data = tmp_path / "qa.jsonl"
    data.write_bytes(GOOD_LINE)
    (adapter / name).write_text('{"method": "lora",\n')
    method = "lori-s" if flag == "--mask-from" else "lora"
    args = train_args(data, tmp_path / "out", "--method", method, flag, str(adapter), "--rank", "2", "--alpha", "4",
                      "--target-modules", "q_proj,v_proj")
    assert_one_line(*run_cli(capsys, *args), f"{adapter / name}:2: malformed JSON")
    assert not (tmp_path / "out").exists()


def test_attack_on_a_malformed_adapter_config(capsys: pytest.CaptureFixture[str], adapter: Path, tmp_path: Path):
    (adapter / "adapter_config.json").write_bytes(b"\xff")
    args = ["attack", "finetune", "--model", "tiny-random", "--adapter", adapter, "--output", tmp_path / "attack"]
    assert_one_line(*run_cli(capsys, *args), f"{adapter / 'adapter_config.json'}:1: not UTF-8 text")


def test_judge_dir_with_truncated_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    from tunelab.models import resolve_model_path

    judge = Path(shutil.copytree(resolve_model_path("tiny-random"), tmp_path / "judge"))
    _truncate(judge / "model.safetensors")
    args = ["eval", "--model", "tiny-random", "--suite", "safety", "--judge", judge, "--limit", "1"]
    assert_one_line(*run_cli(capsys, *args), f"{judge / 'model.safetensors'}: not a readable safetensors file")


@pytest.mark.parametrize("args, fragment", [
    (["--task", "mmlu-pro"], "unknown task 'mmlu-pro'"),
    (["--task", "arithmetic", "--num-fewshot", "2"], "--num-fewshot and --plain apply to benchmarks"),
    (["--task", "arc-easy", "--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
    (["--task", "arc-easy", "--scorer", "exact"], "benchmark 'arc-easy' is scored by 'choice'"),
])
def test_bad_benchmark_options_give_one_line(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str):
    assert_one_line(*run_cli(capsys, "eval", "--model", "tiny-random", *args), fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--turns", "1"], "--turns must be >= 2"),
    (["--task", "mmlu-pro"], "unknown task 'mmlu-pro'"),
    (["--task", "humaneval"], "multi-turn needs a multiple-choice or text-scored task"),
    (["--follow-up", " "], "--follow-up must not be empty"),
    (["--layers", "3,x"], "--layers must be comma-separated layer numbers or ranges like 10-14, got '3,x'"),
])
def test_bad_multi_turn_options_give_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], fragment: str):
    assert_one_line(*run_cli(capsys, "audit", "multi-turn", "--model", "tiny-random", "--output", tmp_path / "mt", *args), fragment)
    assert not (tmp_path / "mt").exists()
