"""The rule engine: discovery, ordering, deduplication, isolation of failing rules."""

from __future__ import annotations

import importlib
import pkgutil
import re

from coredumpd.annotate import engine, rules
from coredumpd.annotate.context import Annotation

# CONTRACT.md "Annotation ids"
CONTRACT_IDS = ("abort-hlt", "pid1-signal-semantics", "init-crash", "symbol-version-miss",
                "library-replaced", "library-modified-in-place", "abort-message", "null-deref",
                "bad-jump", "stack-overflow", "general-protection", "signal-sent",
                "uncaught-exception", "rust-panic")


def _annotation(rule_id, evidence=("e",)):
    return Annotation(rule_id, f"title of {rule_id}", "high", tuple(evidence), "advice")


def test_every_contract_id_has_a_rule_and_a_rank():
    ids = [rule_id for rule_id, _check in engine.discover()]
    assert set(CONTRACT_IDS) <= set(ids)
    assert len(ids) == len(set(ids))
    assert set(ids) <= set(engine.SPECIFICITY)  # every rule's place is explicit
    for rule_id in ids:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule_id)


def test_every_rule_module_is_discovered():
    """discover() imports the rules SPECIFICITY lists: a module of the package that it
    does not list would never run."""
    modules = {f"{rules.__name__}.{info.name}" for info in pkgutil.iter_modules(rules.__path__)
               if not info.name.startswith("_")}
    assert len(modules) >= len(CONTRACT_IDS)
    discovered = engine.discover()
    assert {engine.module_name(rule_id) for rule_id, _check in discovered} == modules
    for rule_id, check in discovered:
        module = importlib.import_module(engine.module_name(rule_id))
        assert module.RULE_ID == rule_id and module.check is check


def test_order_most_specific_first_and_dedupe():
    found = engine.order([_annotation("null-deref"), _annotation("pid1-signal-semantics"),
                          _annotation("abort-hlt"), _annotation("pid1-signal-semantics"),
                          _annotation("library-replaced", ("a",)),
                          _annotation("library-replaced", ("b",))])
    assert [a.id for a in found] == ["abort-hlt", "pid1-signal-semantics", "null-deref",
                                     "library-replaced", "library-replaced"]


def test_failing_rule_becomes_a_problem_and_others_still_run():
    def broken(ctx):
        raise ValueError("boom")

    def wrong_type(ctx):
        return {"id": "x"}

    def fine(ctx):
        return [_annotation("signal-sent")]

    problems = []
    found = engine.run_rules(object(), problems, rules=[("broken", broken),
                                                         ("wrong-type", wrong_type),
                                                         ("signal-sent", fine)])
    assert [a.id for a in found] == ["signal-sent"]
    assert problems[0] == "rule broken failed: ValueError: boom"
    assert problems[1].startswith("rule wrong-type failed: TypeError")


def test_unknown_ids_sort_after_known_ones():
    found = engine.order([_annotation("zz-new-rule"), _annotation("signal-sent")])
    assert [a.id for a in found] == ["signal-sent", "zz-new-rule"]
