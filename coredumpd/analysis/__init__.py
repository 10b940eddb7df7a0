"""The analysis layer: a core and its dump-time facts -> unwound threads -> rules -> result.

:func:`analyze` is the entry point (docs/ARCHITECTURE.md "Analysis");
``python -m coredumpd.analysis CORE`` runs it by hand for debugging; :func:`prepare`
readies a process that forks analyses.
"""

from coredumpd.analysis.runner import analyze, prepare

__all__ = ["analyze", "prepare"]
