"""Run every root-cause rule over one analysed crash.

Rules are the modules of :mod:`coredumpd.annotate.rules`, one per id of
``SPECIFICITY`` (rule ``null-deref`` is ``rules/null_deref.py``); each exposes
``RULE_ID`` and ``check(ctx) -> list[Annotation]``.  The list is written here
rather than found by listing the package (tests/annotate/test_engine.py checks
that every module of the package is in it): each analysis, one per process in
the sandbox, would otherwise import pkgutil and read the directory.  A rule that raises never costs the
analysis: its failure becomes a line in ``problems`` (the analysis result's
``problems``, docs/ARCHITECTURE.md) and the other rules still run — the
"degrade, never lose" rule of STYLE.md.

Annotations come out most specific first (``SPECIFICITY``): a cause that
explains the others (``abort-hlt`` explains why a SIGSEGV came out of
``abort()``) precedes the context that made it possible
(``pid1-signal-semantics``), which precedes general fault classes
(``null-deref``).  ``corectl list`` shows the first one as the root cause.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from types import ModuleType

from coredumpd.annotate import rules as rules_package
from coredumpd.annotate.context import AnalysisContext, Annotation

log = logging.getLogger(__name__)

Check = Callable[[AnalysisContext], list[Annotation]]

# Every rule, most specific first.  Ids not listed (annotations of a caller's own rules)
# sort after these, alphabetically.
SPECIFICITY = (
    "abort-hlt",
    "symbol-version-miss",
    "library-modified-in-place",
    "signal-sent",
    "seccomp-violation",
    "pid1-signal-semantics",
    "init-crash",
    "uncaught-exception",
    "rust-panic",
    "abort-message",
    "crash-in-allocator",
    "stack-overflow",
    "bad-jump",
    "general-protection",
    "null-deref",
    "write-to-read-only",
    "file-mapping-past-eof",
    "trap-instruction",
    "divide-by-zero",
    "division-overflow",
    "library-replaced",
)


def discover() -> list[tuple[str, Check]]:
    """``(RULE_ID, check)`` of every rule module, in specificity order."""
    return [_rule_of(importlib.import_module(module_name(rule_id)), rule_id)
            for rule_id in SPECIFICITY]


def module_name(rule_id: str) -> str:
    """The module of a rule: ``coredumpd.annotate.rules.null_deref`` for ``null-deref``."""
    return f"{rules_package.__name__}.{rule_id.replace('-', '_')}"


def _rule_of(module: ModuleType, rule_id: str) -> tuple[str, Check]:
    check = getattr(module, "check", None)
    if getattr(module, "RULE_ID", None) != rule_id or not callable(check):
        raise TypeError(f"{module.__name__} lacks RULE_ID {rule_id!r} or check()")
    return rule_id, check


def _rank(rule_id: str) -> tuple[int, str]:
    try:
        return SPECIFICITY.index(rule_id), rule_id
    except ValueError:
        return len(SPECIFICITY), rule_id


def run_rules(ctx: AnalysisContext, problems: list[str] | None = None,
              rules: Iterable[tuple[str, Check]] | None = None) -> list[Annotation]:
    """All annotations for ``ctx``, ordered and deduplicated.

    A rule's exception is logged and appended to ``problems`` (when given) as
    ``rule <id> failed: <error>``; it never propagates.
    """
    found: list[Annotation] = []
    for rule_id, check in (discover() if rules is None else rules):
        try:
            found.extend(_checked(rule_id, check(ctx)))
        except Exception as err:
            message = f"rule {rule_id} failed: {type(err).__name__}: {err}"
            log.warning("%s", message, exc_info=True)
            if problems is not None:
                problems.append(message)
    return order(found)


def _checked(rule_id: str, result: object) -> list[Annotation]:
    if not isinstance(result, list) or not all(isinstance(a, Annotation) for a in result):
        raise TypeError(f"check() returned {type(result).__name__}, not list[Annotation]")
    return result


def order(annotations: Iterable[Annotation]) -> list[Annotation]:
    """Most specific first (stable within an id); exact duplicates removed."""
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    unique = []
    for annotation in annotations:
        key = (annotation.id, annotation.title, annotation.evidence)
        if key not in seen:
            seen.add(key)
            unique.append(annotation)
    return sorted(unique, key=lambda annotation: _rank(annotation.id))
