"""What generation needs from something that acts while a model generates or is scored.

Refusal-token control (:mod:`tunelab.safety.refusal_tokens`) rewrites the first decoding step;
steering (:mod:`tunelab.inspect.steering`) adds to the residual stream around every forward. Both
live in rooms above evaluation, so evaluation does not import them: the caller (the recipe layer,
:mod:`tunelab.eval_recipe`) builds the objects and hands them to
:func:`tunelab.evaluate.runner.run_eval`, which only speaks this protocol.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, Protocol, runtime_checkable

from tunelab.errors import TunelabError
from tunelab.evaluate.generation import FirstStep


@runtime_checkable
class GenerationIntervention(Protocol):
    """An object that acts on generation: at the first step, around the forwards, or both.

    ``name`` is the key under which what :meth:`applied` yields is recorded in the results (nothing
    is recorded when it yields None).
    """

    name: str

    def first_step(self, tokenizer: Any) -> FirstStep | None:
        """The rule that rewrites the first decoding step's scores for this tokenizer, or None."""
        ...

    def applied(self, model: Any) -> AbstractContextManager[Any]:
        """A context around the forwards (hooks in, then out); yields a summary for the results, or None."""
        ...

    def check_task(self, task: str, scorer: str) -> None:
        """Raise :class:`TunelabError` when this intervention cannot act on ``task`` scored by ``scorer``."""
        ...


def first_step_of(interventions: Sequence[GenerationIntervention], tokenizer: Any) -> FirstStep | None:
    """The one first-step rule the interventions give (None if none does); two rules cannot compose."""
    rules = [rule for rule in (iv.first_step(tokenizer) for iv in interventions) if rule is not None]
    if len(rules) > 1:
        raise TunelabError(f"{len(rules)} interventions rewrite the first decoding step; give one")
    return rules[0] if rules else None


@contextmanager
def applied_all(interventions: Sequence[GenerationIntervention], model: Any) -> Iterator[dict[str, Any]]:
    """Enter every intervention's context, in order; yields ``{name: summary}`` for those that give one."""
    with ExitStack() as stack:
        summaries = {iv.name: stack.enter_context(iv.applied(model)) for iv in interventions}
        yield {name: summary for name, summary in summaries.items() if summary is not None}


__all__ = ["GenerationIntervention", "applied_all", "first_step_of"]
