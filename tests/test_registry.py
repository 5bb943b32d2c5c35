"""The one registry type: order, lazy targets, aliases, did-you-mean errors."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunelab.errors import TunelabError
from tunelab.registry import Registry


def test_names_keep_registration_order_and_decorator_returns_target() -> None:
    reg: Registry[object] = Registry("thing")

    @reg.register("b")
    class B:
        pass

    reg.register("a", 1)
    assert reg.names() == ("b", "a")
    assert reg.get("b") is B and reg.get("a") == 1
    assert list(reg) == ["b", "a"] and len(reg) == 2 and "a" in reg and "c" not in reg
    assert reg.help() == "b or a"


def test_lazy_target_is_imported_on_first_get_only() -> None:
    reg: Registry[object] = Registry("thing")
    reg.register("dumps", "json:dumps")
    sys.modules.pop("colorsys", None)
    reg.register("colors", "colorsys:rgb_to_hsv")
    assert "colorsys" not in sys.modules
    import json

    assert reg.get("dumps") is json.dumps
    assert reg.get("colors").__module__ == "colorsys"


def test_unknown_name_suggests_the_closest_and_lists_all() -> None:
    reg: Registry[int] = Registry("optimizer")
    reg.register("adamw", 1)
    reg.register("dp-sgd", 2)
    with pytest.raises(TunelabError, match=r"^unknown optimizer 'adamv' \(did you mean 'adamw'\?\); choose one of: adamw, dp-sgd$"):
        reg.get("adamv")
    with pytest.raises(TunelabError, match=r"^unknown optimizer 'zzz'; choose one of: adamw, dp-sgd$"):
        reg.get("zzz")


def test_aliases_and_normalisation_resolve_to_the_registered_name() -> None:
    reg: Registry[int] = Registry("merge method", normalize=lambda s: s.strip().lower().replace("_", "-"))
    reg.register("task-arithmetic", 1, aliases=("ta",))
    assert reg.canonical("Task_Arithmetic") == "task-arithmetic"
    assert reg.get("ta") == 1 and "ta" in reg
    assert reg.names() == ("task-arithmetic",)


def test_registering_a_name_twice_is_refused() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="twice"):
        reg.register("a", 2)


@given(st.lists(st.text(alphabet="abcdefgh-", min_size=1, max_size=8), min_size=1, max_size=6, unique=True), st.text(max_size=10))
def test_every_name_resolves_and_anything_else_is_one_line(names: list[str], probe: str) -> None:
    reg: Registry[int] = Registry("thing")
    for i, name in enumerate(names):
        reg.register(name, i)
    assert [reg.get(n) for n in names] == list(range(len(names)))
    if probe not in names:
        with pytest.raises(TunelabError) as info:
            reg.get(probe)
        assert "\n" not in str(info.value).replace(probe, "") and str(info.value).startswith("unknown thing")
