"""Multi-step integer arithmetic with an exact numeric answer."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelab.tasks.base import Task

# Measured on SmolLM2-135M-Instruct: with two-digit operands even a single addition is
# mostly wrong and a short LoRA run does not move multi-step sums off 0%, so operands stay
# single-digit; the skill is composing two operations without writing out the steps.
MAX_OPERAND = 9
N_OPERATIONS = 2
MULTIPLY_PROBABILITY = 0.4


def evaluate(operands: list[int], operators: list[str]) -> int:
    """Evaluate ``operands[0] op operands[1] op ...`` with ``*`` binding tighter than ``+``/``-``."""
    # Fold multiplications into their left term first, then sum the signed terms.
    terms = [operands[0]]
    signs = [1]
    for op, value in zip(operators, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


@dataclass(frozen=True)
class ArithmeticTask(Task):
    """Two-operation expressions on operands 1-9 (``+``, ``-``, at most one ``*``), answer >= 0."""

    name: str = "arithmetic"
    description: str = (
        "Evaluate a two-step expression on one-digit numbers (+, -, at most one "
        "multiplication); the response is the non-negative integer result only."
    )
    scorer: str = "numeric"

    def draw(self, rng: random.Random) -> tuple[str, str]:
        while True:
            operators = [rng.choice("+-") for _ in range(N_OPERATIONS)]
            if rng.random() < MULTIPLY_PROBABILITY:
                operators[rng.randrange(N_OPERATIONS)] = "*"
            operands = [rng.randint(1, MAX_OPERAND) for _ in range(N_OPERATIONS + 1)]
            value = evaluate(operands, operators)
            # Negative results are rejected: they add a sign to learn without adding a skill.
            if value >= 0:
                break
        expression = str(operands[0]) + "".join(
            f" {op} {v}" for op, v in zip(operators, operands[1:])
        )
        return f"Compute {expression}. Answer with the number only.", str(value)
