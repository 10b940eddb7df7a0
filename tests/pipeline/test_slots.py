"""Back-pressure slots: at most N holders at once, the rest wait; a dead holder's slot
comes back; no usable directory means nobody waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from coredumpd.pipeline import slots

HOLDER = """
import sys, time
from coredumpd.pipeline import slots
print(slots.hold_slot("t", 2, sys.argv[1]), time.monotonic(), flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


def _holder(directory):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def test_third_holder_waits_for_a_slot(tmp_path):
    directory = tmp_path / "slots"
    first, second = _holder(directory), _holder(directory)
    assert first.stdout.readline().startswith("True")
    assert second.stdout.readline().startswith("True")
    third = _holder(directory)
    time.sleep(1.0)
    assert third.poll() is None
    os.set_blocking(third.stdout.fileno(), False)
    assert not third.stdout.readline()  # still waiting: nothing printed
    released = time.monotonic()
    first.kill()  # a holder that dies gives its slot back
    first.wait()
    os.set_blocking(third.stdout.fileno(), True)
    answer, got_at = third.stdout.readline().split()
    assert answer == "True" and float(got_at) >= released
    for holder in (second, third):
        holder.stdin.close()
        holder.wait()
    assert sorted(os.listdir(directory)) == ["t.0", "t.1", "t.gate"]
    assert os.stat(directory).st_mode & 0o777 == 0o700


RELEASER = """
import sys
from coredumpd.pipeline import slots
slots.hold_slot("t", 1, sys.argv[1])
slots.release_slot("t")  # what the analysis job does before waiting for the fleet database
print("released", flush=True)
sys.stdin.read()  # still alive
"""


def test_a_released_slot_is_free_while_its_holder_lives(tmp_path):
    directory = tmp_path / "slots"
    releaser = subprocess.Popen([sys.executable, "-c", RELEASER, str(directory)], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert releaser.stdout.readline() == "released\n"
    assert slots.hold_slot("t", 1, str(directory)) is True  # at once, not waiting
    slots.release_slot("t")
    releaser.stdin.close()
    releaser.wait()


def test_no_usable_directory_means_no_waiting(tmp_path):
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)  # others could hold our slots: not used
    assert slots.hold_slot("x", 1, str(open_to_all)) is False
    assert slots.hold_slot("y", 1, str(tmp_path / "missing" / "deeper")) is False


def test_counts():
    assert 4 <= slots.handler_slots() <= 16
    cpus = os.cpu_count() or 1
    assert 1 <= slots.analysis_slots() < max(2, cpus)  # a CPU left for the next capture
