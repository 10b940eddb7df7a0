"""One module per root-cause rule: ``RULE_ID`` and ``check(ctx) -> list[Annotation]``.

Modules here are discovered by :func:`coredumpd.annotate.engine.discover`;
ids are listed in CONTRACT.md ("Annotation ids") and never change meaning.
"""
