"""Read what a child wrote to a pseudo-terminal, for tests that need a real tty."""

from __future__ import annotations

import os
import select


def read_all(controller: int, timeout: float = 60) -> bytes:
    """Everything written to the terminal of ``controller`` until its other side is
    closed (EIO or end of file) or nothing comes for ``timeout`` seconds; closes it."""
    chunks = []
    try:
        while select.select([controller], [], [], timeout)[0]:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child side closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(controller)
    return b"".join(chunks)
