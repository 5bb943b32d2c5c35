"""The merge-method registry: ``--method`` name → its :class:`MergeMethod` (one file each).

A new method is one file (a frozen ``MergeMethod`` dataclass) plus one line here. Names are
normalised (``Task_Arithmetic`` → ``task-arithmetic``) before lookup.
"""

from __future__ import annotations

from tunelab.merge.base import MergeMethod
from tunelab.merge.cat import Cat
from tunelab.merge.dare import DareLinear, DareTies
from tunelab.merge.linear import Linear
from tunelab.merge.task_arithmetic import TaskArithmetic
from tunelab.merge.ties import Ties
from tunelab.registry import Registry


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method", normalize=_normalize, listing="choose one of ")
for _method in (Cat(), Linear(), TaskArithmetic(), Ties(), DareLinear(), DareTies()):
    MERGE_METHODS.register(_method.name, _method)


def get_merge_method(name: str) -> MergeMethod:
    """A registered method by name (``task_arithmetic`` is accepted for ``task-arithmetic``)."""
    return MERGE_METHODS.get(name)


__all__ = ["MERGE_METHODS", "get_merge_method"]
