"""Unwinding: call-frame information, then frame pointer, then stack scan."""
