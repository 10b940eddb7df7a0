"""coredumpd: a kernel.core_pattern handler that stores every crash and explains it."""

__version__ = "0.1.0"
