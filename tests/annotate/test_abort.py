"""abort(): abort-hlt, pid1-signal-semantics and abort-message on real crashes."""

from __future__ import annotations

import pytest

from tests.annotate.crashing import PROGRAMS, crash

pytestmark = pytest.mark.kernel


def test_abort_as_namespace_pid1(program, tmp_path):
    """incidents/abort-hlt-pid1-container.txt: unshare -fp --mount-proc ./aborter."""
    pidfile = str(tmp_path / "aborter.pid")
    result = crash(["/bin/sh", str(PROGRAMS / "pid1.sh"), pidfile, program("aborter"), "wait"],
                   tmp_path, pidfile=pidfile)
    assert result.analysis["signal"]["name"] == "SIGSEGV"
    assert result.ids[:3] == ["abort-hlt", "pid1-signal-semantics", "abort-message"]
    hlt = result.evidence("abort-hlt")
    assert "'hlt' instruction (f4)" in hlt and "abort+0x" in hlt
    assert "PID 1 of its PID namespace" in hlt  # what blocked SIGABRT
    assert "abort() was called from frame #" in hlt and "reset_stdio" in hlt
    assert result.annotation("abort-hlt")["confidence"] == "high"
    message = result.annotation("abort-message")
    assert "fstat_result == 0" in message["title"]
    assert "(assertion)" in result.evidence("abort-message")
    assert "reset_stdio" in result.evidence("abort-message")
    if result.via == "handler":
        assert "NSpid" in result.evidence("pid1-signal-semantics")


def test_abort_under_seccomp_without_pid1(program, tmp_path):
    """tgkill/kill refused by seccomp: abort() reaches hlt in an ordinary process."""
    result = crash([program("seccomp_abort")], tmp_path)
    assert result.ids[0] == "abort-hlt"
    assert "pid1-signal-semantics" not in result.ids
    assert "general-protection" not in result.ids  # the hlt case is abort-hlt's alone
    if result.via == "handler":
        assert "seccomp filter" in result.evidence("abort-hlt")


def test_plain_abort_is_not_abort_hlt(program, tmp_path):
    result = crash([program("plain_abort")], tmp_path)
    assert "abort-hlt" not in result.ids and "abort-message" not in result.ids


def test_crash_outside_a_pid_namespace_is_not_pid1(program, tmp_path):
    result = crash([program("aborter")], tmp_path)
    assert result.ids == ["abort-message"]
    assert result.analysis["signal"]["name"] == "SIGABRT"


@pytest.mark.parametrize(("name", "kind", "text"), [
    ("double_free", "heap-corruption", "free(): double free detected in tcache 2"),
    ("stack_smash", "stack-smashing", "*** stack smashing detected ***: terminated"),
    ("fortify", "fortify", "*** buffer overflow detected ***: terminated"),
])
def test_abort_message_kinds(program, tmp_path, name, kind, text):
    result = crash([program(name)], tmp_path)
    assert result.ids == ["abort-message"]
    evidence = result.evidence("abort-message")
    assert f"({kind})" in evidence and text in evidence
    assert "__abort_msg" in evidence
