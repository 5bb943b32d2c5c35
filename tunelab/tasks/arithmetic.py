"""Multi-step integer arithmetic with an exact numeric answer."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelab.tasks.base import Task

MAX_OPERAND = 99
MAX_FACTOR = 9


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
    """Expressions with 2-3 operations on operands below 100, at most one ``* k`` with k < 10."""

    name: str = "arithmetic"
    description: str = (
        "Evaluate a 2-3 step integer expression (+, -, at most one multiplication "
        "by a one-digit number); the response is the number only."
    )
    scorer: str = "numeric"

    def draw(self, rng: random.Random) -> tuple[str, str]:
        n_ops = rng.choice((2, 3))
        operators = [rng.choice("+-") for _ in range(n_ops)]
        operands = [rng.randint(1, MAX_OPERAND) for _ in range(n_ops + 1)]
        if rng.random() < 0.4:
            # The factor must be small or the skill stops being learnable for a tiny model.
            slot = rng.randrange(n_ops)
            operators[slot] = "*"
            operands[slot + 1] = rng.randint(2, MAX_FACTOR)
        expression = str(operands[0]) + "".join(
            f" {op} {value}" for op, value in zip(operators, operands[1:])
        )
        prompt = f"Compute {expression}. Answer with the number only."
        return prompt, str(evaluate(operands, operators))
