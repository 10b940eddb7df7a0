"""Run the handler as the kernel does, for tests/pipeline: core on stdin, fds 1/2
closed, empty environment, cwd /; and programs to crash."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
from typing import Any

from tests.support.crash import HANDLER, RegisteredHandler, _row_dict

HERE = pathlib.Path(__file__).resolve().parent
RLIM_INFINITY = str(2**64 - 1)

SEGV_THREADS = r"""
#include <pthread.h>
#include <unistd.h>
static void *idle(void *arg) { (void)arg; pause(); return 0; }
int main(void) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], 0, idle, 0);
    usleep(20000);
    *(volatile int *)0 = 1;
}
"""

BIG = r"""
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    size_t size = (size_t)atol(argv[1]) << 20;
    unsigned char *p = malloc(size);
    for (size_t i = 0; i < size; i++) p[i] = (unsigned char)(i * 2654435761u >> 13);
    *(volatile int *)0 = p[size / 2];
}
"""

SIGNALS = {
    "SIGSEGV": "int main(void){ *(volatile int *)0 = 1; }",
    "SIGABRT": "#include <stdlib.h>\nint main(void){ abort(); }",
    "SIGFPE": "int main(int c, char **v){ volatile int a = 7, z = c - 1; (void)v; return a / z; }",
    "SIGBUS": r"""
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void){
    char name[] = "/tmp/cdbusXXXXXX"; int fd = mkstemp(name); unlink(name);
    volatile char *p = mmap(0, 8192, PROT_READ, MAP_SHARED, fd, 0);
    return p[4096];
}""",
    "SIGILL": "int main(void){ __asm__ volatile(\"ud2\"); }",
}


def stand_in(tmp_path: pathlib.Path, name: str = "stand-in") -> subprocess.Popen[bytes]:
    """A live process whose /proc the handler reads (copy of sleep named ``name``)."""
    exe = tmp_path / name
    shutil.copy("/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "60"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if os.readlink(f"/proc/{proc.pid}/exe") == str(exe):
                break
        except OSError:
            pass
        time.sleep(0.01)
    return proc


def kernel_args(pid: int, signo: int = 11, uid: int = 0, rlimit: str = RLIM_INFINITY,
                dump_mode: int = 1, ns_pid: int | None = None) -> list[str]:
    """%P %i %p %u %g %s %t %c %h %d (no %F: we hold no pidfd to give)."""
    return [str(pid), str(pid), str(ns_pid or pid), str(uid), str(uid), str(signo),
            str(int(time.time())), rlimit, "testhost", str(dump_mode)]


def run_as_kernel(stdin_path: str | os.PathLike[str] | None, args: list[str],
                  config_path: str | None, env: dict[str, str] | None = None,
                  timeout: float = 60) -> int:
    """The handler with fds 1 and 2 closed, an empty environment (plus ``env``), cwd /."""
    argv = [HANDLER, *args] + (["--config", config_path] if config_path else [])

    def close_stdio() -> None:
        os.close(1)
        os.close(2)
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.run(argv, stdin=stdin, env=env or {}, cwd="/", timeout=timeout,
                              preexec_fn=close_stdio, check=False)
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    return proc.returncode


def rows(handler: RegisteredHandler) -> list[dict[str, Any]]:
    index = handler.index
    try:
        return [_row_dict(r) for r in index.find([])]
    finally:
        # Left open, the next Index opened in this process while a handler writes
        # failed with "database disk image is malformed" (seen here); likely
        # a close() of the file dropping this connection's POSIX locks
        # (sqlite.org/howtocorrupt.html, 2.2).
        index.close()
