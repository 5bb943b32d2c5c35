"""Options declared once: metadata on the field, one-field rules with the project's messages."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest

from tunelab.errors import TunelabError
from tunelab.options import check_fields, flag_name, meta, option
from tunelab.registry import Registry

ROUTERS: Registry[str] = Registry("router")
ROUTERS.register("topk", "a")
ROUTERS.register("sinkhorn", "b")


@dataclass
class Section:
    clip: float = option(1.0, help="clip C", gt=0)


@dataclass
class Cfg:
    rank: int = option(32, help="adapter rank", min=1)
    sparsity: float = option(0.9, help="fraction held at zero", min=0, lt=1)
    scheduler: str = option("constant", help="LR schedule", choices=("constant", "cosine"))
    router: str = option("topk", choices=ROUTERS)
    disjoint: bool = option(False, flag="--disjoint")
    names: list[str] = option(default_factory=list, help="modules")
    dp: Section = option(default_factory=Section)


def test_metadata_is_on_the_field() -> None:
    f = {f.name: f for f in fields(Cfg)}
    assert meta(f["rank"], "help") == "adapter rank" and meta(f["rank"], "min") == 1
    assert flag_name(f["disjoint"]) == "--disjoint" and flag_name(f["rank"]) == "--rank"
    assert Cfg().names == [] and Cfg().names is not Cfg().names


@pytest.mark.parametrize("kw, message", [
    ({"rank": 0}, r"^--rank must be >= 1, got 0$"),
    ({"sparsity": 1.0}, r"^--sparsity must be in \[0, 1\), got 1$"),
    ({"scheduler": "step"}, r"^unknown scheduler 'step'; choose one of: constant, cosine$"),
    ({"router": "sinkhorm"}, r"^unknown router 'sinkhorm' \(did you mean 'sinkhorn'\?\); choose one of: topk, sinkhorn$"),
    ({"dp": Section(clip=0.0)}, r"^--clip must be > 0, got 0$"),
])
def test_one_field_rules_give_the_project_messages(kw: dict, message: str) -> None:
    with pytest.raises(TunelabError, match=message):
        check_fields(Cfg(**kw))


def test_values_inside_the_bounds_pass() -> None:
    check_fields(Cfg(rank=1, sparsity=0.0, scheduler="cosine", router="sinkhorn", dp=Section(clip=0.1)))
