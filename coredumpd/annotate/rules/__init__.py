"""One module per root-cause rule: ``RULE_ID`` and ``check(ctx) -> list[Annotation]``.

Each module's id is in :data:`coredumpd.annotate.engine.SPECIFICITY`, which
:func:`~coredumpd.annotate.engine.discover` imports them from (a module missing
there fails tests/annotate/test_engine.py); ids are listed in CONTRACT.md
("Annotation ids") and never change meaning.
"""
