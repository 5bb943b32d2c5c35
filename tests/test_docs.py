"""Docs checks over README.md and docs/*.md: every relative link or image points at a real file, and
every `tunelab …` line in a code block names a real command and only its real flags (checked against
the typer app, not run); the README's command map covers every command and fits its budget."""

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ')'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    """A broken relative link is a dead end for a newcomer; anchors are not checked."""
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # external URL or in-page anchor
        if not (doc.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


def anchors(text: str) -> set[str]:
    """The heading anchors GitHub makes for a markdown text (headings inside code blocks are not)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_code or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_anchors_resolve(doc: Path) -> None:
    """`page.md#section` and `#section` land on a heading that exists (GitHub's anchor rules)."""
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or "#" not in target:
            continue
        page, anchor = target.split("#", 1)
        path = doc.parent / page if page else doc
        if path.suffix == ".md" and path.exists() and anchor not in anchors(path.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{doc.name}: links to missing headings {broken}"


def test_anchor_rules() -> None:
    """The slug rules match GitHub's on the kinds of heading the docs use."""
    text = "## Merging, continual learning, the safety adapter\n### Experiment: x (`experiments/multitask.py`)\n" \
           "```bash\n# a comment, not a heading\n```\n## Demo\n## Demo\n"
    assert anchors(text) == {"merging-continual-learning-the-safety-adapter",
                             "experiment-x-experimentsmultitaskpy", "demo", "demo-1"}


# --- every `tunelab …` line in a code block names a real command and only its real flags ---------
#
# Checked against the typer app itself (the click command tree), never by running the commands.
# Shell blocks (bash, sh, shell, console) are read line by line; other text blocks only where a line
# has a `$ ` prompt (their other lines are program output, e.g. a benchmark's "tunelab LoRA" row);
# python and yaml blocks are code, not command lines. The tree is walked by duck typing (a group has
# `commands`, an option has `opts`): typer 0.29 carries its own copy of click's classes.

SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
TEXT_BLOCKS = {"", "text"}
FENCE = re.compile(r"^\s*```\s*(\S*)")  # the info string's first word is the language
NUMBER = re.compile(r"^-\d|^-\.\d")  # a negative value such as `--coeff -1.5`, not a flag
PLACEHOLDER = {"...", "…"}


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each command line in the fenced code blocks of a markdown text.

    `\\` continuations are joined, a leading `$ ` prompt is dropped; lines that are not commands
    (comments, output) are kept too — :func:`tunelab_args` tells which ones run tunelab.
    """
    out: list[tuple[int, str]] = []
    lang: str | None = None  # None: outside a fence
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            lang = fence.group(1).lower() if lang is None else None
            pending = ""
            continue
        if lang is None or (lang not in SHELL_BLOCKS and lang not in TEXT_BLOCKS):
            continue
        if not pending:
            start = number
            stripped = line.strip()
            if stripped.startswith("$ "):
                line = stripped[2:]
            elif lang not in SHELL_BLOCKS:
                continue  # output in a text block
        body = line.rstrip()
        if body.endswith("\\"):
            pending += body[:-1] + " "
            continue
        out.append((start, pending + body))
        pending = ""
    return out


def tunelab_args(command: str) -> list[str] | None:
    """The arguments after `tunelab` if this shell line runs tunelab, else None.

    Recognised: `tunelab …`, `.venv/bin/tunelab …`, and `-m tunelab` / `-m tunelab.cli` after any
    launcher (`python`, `.venv/bin/python`, `torchrun …`, `accelerate launch …`); leading
    `VAR=value` assignments are skipped. Comments are dropped, `[…]` around optional flags removed.
    """
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        return None
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    if os.path.basename(tokens[0]) == "tunelab":
        rest = tokens[1:]
    else:
        for i, tok in enumerate(tokens[:-1]):
            if tok == "-m" and tokens[i + 1] in ("tunelab", "tunelab.cli"):
                rest = tokens[i + 2:]
                break
        else:
            return None
    return [t.strip("[]") for t in rest if t.strip("[]")]


def check_tunelab_args(root: Any, args: list[str]) -> list[str]:
    """Problems with one tunelab invocation: an unknown command path, or a flag its command lacks.

    Arguments that are not flags (paths, values, placeholders such as `DIR`, `<run>`, `...`) are
    not checked; `--help` is always allowed.
    """
    command, path = root, ["tunelab"]
    rest = list(args)
    while is_group(command) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        if name in PLACEHOLDER:
            return []
        sub = command.commands.get(name)
        if sub is None:
            return [f"{' '.join(path)}: no command {name!r} (has: {', '.join(sorted(command.commands))})"]
        command, path = sub, [*path, name]
    takes_value: dict[str, bool] = {"--help": False}  # flag -> whether the next token is its value
    arguments = 0  # positional arguments the command takes (-1: any number)
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            for flag in (*param.opts, *param.secondary_opts):
                takes_value[flag] = not (param.is_flag or getattr(param, "count", False))
        elif getattr(param, "param_type_name", "") == "argument":
            arguments = -1 if param.nargs == -1 or arguments == -1 else arguments + param.nargs
    problems, positionals, i = [], 0, 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token in PLACEHOLDER:
            continue  # `tunelab train ... --flag`: anything may stand there
        if token.startswith("-") and not NUMBER.match(token) and token not in ("-", "--"):
            flag, eq, _ = token.partition("=")
            if flag not in takes_value:
                problems.append(f"{' '.join(path)}: no flag {flag}")
                if not eq and i < len(rest) and not rest[i].startswith("-"):
                    i += 1  # most likely its value: not counted as a positional argument
            elif takes_value[flag] and not eq:
                i += 1  # its value
            continue
        positionals += 1
    if arguments != -1 and positionals > arguments:
        problems.append(f"{' '.join(path)}: {positionals} positional arguments, takes {arguments}")
    return problems


def is_group(command: Any) -> bool:
    """A command group (`tunelab`, `tunelab inspect`, …) rather than a command."""
    return hasattr(command, "commands")


def app_command() -> Any:
    """The click command tree of the tunelab CLI (built, not run)."""
    import typer

    import tunelab.cli

    return typer.main.get_command(tunelab.cli.app)


def command_paths(command: Any, path: tuple[str, ...] = ("tunelab",)) -> list[str]:
    """Every leaf command path of the app, e.g. 'tunelab inspect steer train'."""
    if is_group(command):
        return [p for name, sub in command.commands.items() for p in command_paths(sub, (*path, name))]
    return [" ".join(path)]


@pytest.fixture(scope="module")
def cli_root() -> Any:
    return app_command()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_code_block_commands_exist(doc: Path, cli_root: Any) -> None:
    """A command or flag the docs name but the CLI lacks is a dead end: each must be real."""
    problems = []
    for number, command in command_lines(doc.read_text(encoding="utf-8")):
        args = tunelab_args(command)
        if args is not None:
            problems += [f"{doc.name}:{number}: {p}" for p in check_tunelab_args(cli_root, args)]
    assert not problems, "\n".join(problems)


def test_docs_have_tunelab_lines() -> None:
    """The check above is not vacuous: the docs' code blocks hold many tunelab command lines."""
    found = sum(tunelab_args(c) is not None for doc in DOCS for _, c in command_lines(doc.read_text(encoding="utf-8")))
    assert found >= 60, found


def test_checker_catches_made_up_flags_and_commands(cli_root: Any) -> None:
    """The checker reports what is not there, and accepts what is."""
    text = "\n".join([
        "```bash",
        "$ tunelab train --model tiny-random --no-such-flag 3   # a comment --also-not-checked",
        "tunelab no-such-command --output x",
        "tunelab inspect steer nope",
        "python -m tunelab eval --task arithmetic --no-such-eval-flag",
        "ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m tunelab.cli train --fsdp \\",
        "    --made-up-continued-flag 1",
        "tunelab generate \"hi # not a comment\" --steer runs/v --coeff -1.5 --sample --help",
        "tunelab train --bf16 --no-bf16 --lr=1e-3 --data x",
        "tunelab train ... --init-from DIR [--reference <run>]",
        ".venv/bin/tunelab inspect steer train --pairs p.jsonl --output=runs/v",
        "python experiments/multitask.py --not-tunelab",
        "tunelab unpack runs/a runs/b --output runs/c",
        "tunelab merge runs/a runs/b runs/c --analyze --output runs/m",
        "```",
        "```",
        "tunelab LoRA   326  2.14x   (benchmark output: not a command)",
        "```",
    ])
    problems = [p for _, c in command_lines(text) if (a := tunelab_args(c)) is not None
                for p in check_tunelab_args(cli_root, a)]
    assert problems == [
        "tunelab train: no flag --no-such-flag",
        problems[1],
        problems[2],
        "tunelab eval: no flag --no-such-eval-flag",
        "tunelab train: no flag --made-up-continued-flag",
        "tunelab unpack: 2 positional arguments, takes 1",
    ], problems
    assert problems[1].startswith("tunelab: no command 'no-such-command'")
    assert problems[2].startswith("tunelab inspect steer: no command 'nope'")


def test_readme_map_covers_every_command(cli_root: Any) -> None:
    """The README's command map names every command of the app, and only real ones."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^\|\s*`(tunelab[^`]*)`\s*\|", readme, flags=re.M))
    paths = set(command_paths(cli_root))
    assert paths - named == set(), f"missing from the README map: {sorted(paths - named)}"
    assert named - paths == set(), f"not commands of the app: {sorted(named - paths)}"


def test_readme_fits_its_budget() -> None:
    """The README is the front door, not the manual: the stages live in docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 320, f"README.md has {lines} lines (budget 320): move detail to docs/"
