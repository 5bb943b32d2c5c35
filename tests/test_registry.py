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


def test_a_lazy_target_is_imported_on_first_get_and_cached() -> None:
    """A "module:attr" target is imported by the first get, not by register, and kept."""
    name = "tests._registry_lazy_probe"
    sys.modules.pop(name, None)
    reg: Registry[object] = Registry("thing")
    reg.register("probe", f"{name}:VALUE")
    assert name not in sys.modules  # registering imports nothing
    import types

    module = types.ModuleType(name)
    module.VALUE = object()  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        first = reg.get("probe")
        del sys.modules[name]  # the target is kept: no second import
        assert reg.get("probe") is first is module.VALUE  # type: ignore[attr-defined]
    finally:
        sys.modules.pop(name, None)


def test_a_plain_string_with_a_colon_is_a_target_not_an_import() -> None:
    reg: Registry[str] = Registry("suite")
    reg.register("safety", "ASR: attack success rate")
    assert reg.get("safety") == "ASR: attack success rate"


def test_mapping_style_reads_and_the_listing_wording() -> None:
    reg: Registry[int] = Registry("pruning method", listing="known methods: ")
    reg.register("dense", 0)
    reg.register("wanda-sp", 1)
    assert reg["wanda-sp"] == 1 and list(reg.values()) == [0, 1] and dict(reg.items()) == {"dense": 0, "wanda-sp": 1}
    with pytest.raises(TunelabError, match=r"^unknown pruning method 'wanda' \(did you mean 'wanda-sp'\?\); known methods: dense, wanda-sp$"):
        reg["wanda"]


def test_an_alias_clashing_with_a_name_is_refused() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a", 1, aliases=("b",))
    with pytest.raises(ValueError, match="twice"):
        reg.register("b", 2)


_NORMALISE = lambda s: s.strip().lower().replace("_", "-")  # noqa: E731  (the merge registry's)


@given(st.sampled_from(["cat", "linear", "task-arithmetic", "ties", "dare-linear", "dare-ties"]),
       st.lists(st.booleans(), min_size=20, max_size=20), st.text(alphabet=" \t", max_size=3), st.text(alphabet=" \t", max_size=3))
def test_merge_names_resolve_whatever_their_case_underscores_and_spaces(name: str, upper: list[bool], left: str, right: str) -> None:
    from tunelab.merge import MERGE_METHODS

    spelled = left + "".join(c.upper() if u else c for c, u in zip(name, upper)).replace("-", "_") + right
    assert MERGE_METHODS.canonical(spelled) == name and MERGE_METHODS.get(spelled).name == name


# --------------------------------------------------------------------------- each room's registry
def _rooms() -> dict[str, tuple[Registry, tuple[str, ...]]]:
    from tunelab.adapters import ADAPTER_METHODS
    from tunelab.evaluate.benchmarks import BENCHMARKS
    from tunelab.evaluate.judges import JUDGES
    from tunelab.evaluate.runner import SUITES
    from tunelab.evaluate.scorers import SCORERS
    from tunelab.evaluate.tasks import EVAL_TASKS
    from tunelab.finetune import RULES, SECTIONS
    from tunelab.inspect.heads import SCORES as HEAD_SCORES
    from tunelab.inspect.pruning import PRUNING_METHODS
    from tunelab.inspect.steering import STEERING_METHODS
    from tunelab.merge import MERGE_METHODS
    from tunelab.moe.routers import ROUTERS
    from tunelab.privacy.scores import SCORES
    from tunelab.results import RESULT_KINDS
    from tunelab.tasks import SCORERS as TEXT_SCORERS
    from tunelab.tasks import TASKS

    return {
        "adapters": (ADAPTER_METHODS, ("lora", "lori-d", "lori-s", "lota", "full")),
        "update rules": (RULES, ("adamw", "zo", "dp-zo", "dp-sgd")),
        "config sections": (SECTIONS, ("refusal", "constrained", "canary", "safety_check", "monitor", "dp")),
        "merge": (MERGE_METHODS, ("cat", "linear", "task-arithmetic", "ties", "dare-linear", "dare-ties")),
        "pruning": (PRUNING_METHODS, ("dense", "pp", "wanda-sp", "aapp", "aapp-gate")),
        "steering": (STEERING_METHODS, ("mean-diff", "pca-diff", "pca-center", "logistic")),
        "routers": (ROUTERS, ("topk", "sinkhorn", "default")),
        "membership scores": (SCORES, ("secret_loss", "sequence_loss", "min_k", "zlib", "reference")),
        "judges": (JUDGES, ("keyword", "embedding")),
        "built-in tasks": (TASKS, ("arithmetic", "reverse_words")),
        "text scorers": (TEXT_SCORERS, ("numeric", "exact", "contains")),
        "scorers": (SCORERS, ("numeric", "exact", "contains", "choice", "code")),
        "eval tasks": (EVAL_TASKS, ("arithmetic", "reverse_words", "humaneval")),
        "suites": (SUITES, ("safety",)),
        "benchmarks": (BENCHMARKS, ("mmlu", "mmlu-cloze", "arc-easy", "arc-challenge", "hellaswag", "piqa",
                                    "winogrande", "boolq", "openbookqa", "sciq")),
        "head scores": (HEAD_SCORES, None),  # type: ignore[dict-item]
        "result kinds": (RESULT_KINDS, None),  # type: ignore[dict-item]
    }


@pytest.mark.parametrize("room", list(_rooms()))
def test_each_room_registry_is_a_registry_with_the_expected_names(room: str) -> None:
    registry, expected = _rooms()[room]
    assert isinstance(registry, Registry)
    if expected is not None:
        assert registry.names() == expected
    assert len(registry) > 0
    for name in registry.names():
        registry.get(name)  # every target, lazy ones included, resolves
    with pytest.raises(TunelabError) as info:
        registry.get("no-such-" + registry.names()[0])
    assert "\n" not in str(info.value)


def test_adapter_capabilities_replace_the_name_tests() -> None:
    from tunelab.adapters import ADAPTER_METHODS, methods_with
    from tunelab.registry import join_names

    assert methods_with("trains_new_token_rows") == ("lora", "lori-d", "full")
    assert methods_with("needs_mask_from") == ("lori-s",) and ADAPTER_METHODS.get("lori-s").mask_source == "lori-d"
    assert methods_with("full_model") == ("full",) and methods_with("saves_task_vector") == ("lota",)
    assert methods_with("supports_disjoint") == ("lori-s", "lota")
    assert join_names(methods_with("supports_init_from"), "and") == "lora, lori-d, lori-s and lota"
    lota, lori_s, lora = (ADAPTER_METHODS.get(n) for n in ("lota", "lori-s", "lora"))
    assert not lota.weight_decay_applies(False) and lori_s.weight_decay_applies(False)
    assert not lori_s.weight_decay_applies(True) and lora.weight_decay_applies(True)


def test_update_rule_capabilities() -> None:
    from tunelab.finetune import RULES

    assert [n for n, rule in RULES.items() if rule.private] == ["dp-zo", "dp-sgd"]
    assert [n for n, rule in RULES.items() if rule.zeroth_order] == ["zo", "dp-zo"]
    assert [n for n, rule in RULES.items() if rule.supports_fsdp_and_objectives] == ["adamw"]


def test_unknown_method_error_gains_only_the_hint() -> None:
    from tunelab.adapters import get_method

    with pytest.raises(TunelabError, match=r"^unknown method 'lorra' \(did you mean 'lora'\?\); choose one of: lora, lori-d, lori-s, lota, full$"):
        get_method("lorra")


def test_router_and_merge_capabilities() -> None:
    from tunelab.merge import MERGE_METHODS
    from tunelab.moe.routers import ROUTERS

    assert [n for n, kind in ROUTERS.items() if kind.balances_itself] == ["sinkhorn"]
    assert [n for n, m in MERGE_METHODS.items() if m.same_ranks] == ["linear"]


def test_lazy_exports_import_on_first_use_and_refuse_unknown_names() -> None:
    """A lazy front door lists its names, imports a module only when one of its names is read, and
    raises AttributeError (not ImportError) for a name it does not export."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from tunelab.registry import lazy_exports\n"
        "getattr_, all_ = lazy_exports('pkg', {'json': ('dumps',), 'tunelab.scaling.flops': ('flops_per_token',)})\n"
        "print(all_, 'tunelab.scaling.flops' in sys.modules)\n"
        "print(getattr_('dumps')({}), 'tunelab.scaling.flops' in sys.modules)\n"
        "try:\n"
        "    getattr_('nope')\n"
        "except AttributeError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['dumps', 'flops_per_token'] False", "{} False", "module 'pkg' has no attribute 'nope'"]
