"""Each fault rule on a real crash through the kernel, and where it must stay silent."""

from __future__ import annotations

import pytest

from tests.annotate.crashing import crash

pytestmark = pytest.mark.kernel


def test_null_deref_read(program, tmp_path):
    result = crash([program("null_deref"), "read"], tmp_path)
    assert result.ids == ["null-deref"]  # and every other rule silent
    annotation = result.annotation("null-deref")
    assert "read at 0x10" in annotation["title"]
    evidence = result.evidence("null-deref")
    assert "mov eax, dword ptr [rax + 0x10]" in evidence
    assert "rax = 0x0" in evidence
    assert "read_level" in evidence


def test_null_deref_write(program, tmp_path):
    result = crash([program("null_deref")], tmp_path)
    assert "write at 0x10" in result.annotation("null-deref")["title"]
    assert "set_level" in result.evidence("null-deref")
    assert "bad-jump" not in result.ids and "write-to-read-only" not in result.ids


def test_bad_jump_null_function_pointer(program, tmp_path):
    result = crash([program("bad_jump"), "null"], tmp_path)
    assert result.ids == ["bad-jump"]
    evidence = result.evidence("bad-jump")
    assert "pc = 0x0: not mapped" in evidence
    assert "dispatch" in evidence and "call " in evidence  # the caller, from [rsp]
    assert "null-deref" not in result.ids  # executing at 0 is not a data access


def test_bad_jump_into_heap(program, tmp_path):
    result = crash([program("bad_jump"), "heap"], tmp_path)
    assert "corrupted code pointer" in result.annotation("bad-jump")["title"]
    assert "not executable" in result.evidence("bad-jump")


def test_stack_overflow_main_thread(program, tmp_path):
    result = crash([program("recurse")], tmp_path)
    assert result.ids == ["stack-overflow"]
    evidence = result.evidence("stack-overflow")
    assert "recursion: descend is on the stack" in evidence
    assert "bytes of stack per call" in evidence


def test_stack_overflow_thread_guard_page(program, tmp_path):
    result = crash([program("recurse"), "thread"], tmp_path)
    assert "guard page" in result.evidence("stack-overflow")
    assert "write-to-read-only" not in result.ids  # a ---p guard is not read-only data


def test_general_protection_non_canonical(program, tmp_path):
    result = crash([program("gp_fault")], tmp_path)
    assert result.ids == ["general-protection"]
    evidence = result.evidence("general-protection")
    assert "0x4141414141414149" in evidence and "non-canonical" in evidence
    assert "abort-hlt" not in result.ids


def test_general_protection_call_through_garbage(program, tmp_path):
    result = crash([program("gp_fault"), "call"], tmp_path)
    assert result.ids == ["general-protection"]
    assert "call to non-canonical address 0x4141414141414141" in \
        result.annotation("general-protection")["title"]
    assert "bad-jump" not in result.ids  # pc is still at the call, in the code


def test_divide_by_zero(program, tmp_path):
    result = crash([program("everyday"), "divzero"], tmp_path)
    assert result.ids == ["divide-by-zero"]
    assert "idiv" in result.evidence("divide-by-zero")
    assert "= 0" in result.evidence("divide-by-zero")


def test_division_overflow_is_not_divide_by_zero(program, tmp_path):
    result = crash([program("everyday"), "overflow"], tmp_path)
    assert result.ids == ["division-overflow"]
    assert "divisor dword ptr [rbp - 8] = 0xffffffff" in result.evidence("division-overflow")


def test_trap_instruction(program, tmp_path):
    result = crash([program("everyday"), "trap"], tmp_path)
    assert result.ids == ["trap-instruction"]
    assert "0f 0b" in result.evidence("trap-instruction")


def test_write_to_read_only(program, tmp_path):
    result = crash([program("everyday"), "rodata"], tmp_path)
    assert result.ids == ["write-to-read-only"]
    evidence = result.evidence("write-to-read-only")
    assert "r--p" in evidence and "mov byte ptr [rax], 0x48" in evidence
    assert "null-deref" not in result.ids


def test_crash_in_allocator(program, tmp_path):
    result = crash([program("everyday"), "wildfree"], tmp_path)
    assert result.ids == ["crash-in-allocator"]
    evidence = result.evidence("crash-in-allocator")
    assert "#0 free" in evidence and "fault address 0xdead0008" in evidence  # chunk header
    assert "rdi = 0xdead0010" in evidence  # the pointer given to free()
    assert "main" in evidence  # the caller


def test_sigbus_past_end_of_file(program, tmp_path):
    mapped = tmp_path / "mapped.bin"
    result = crash([program("everyday"), "sigbus", str(mapped)], tmp_path)
    assert result.ids == ["file-mapping-past-eof"]
    evidence = result.evidence("file-mapping-past-eof")
    assert str(mapped) in evidence and "file offset 0x1010" in evidence
    if result.via == "handler":  # the file's size at dump time is a fact
        assert "100 bytes long" in evidence
        assert result.annotation("file-mapping-past-eof")["confidence"] == "high"


def test_signal_sent_by_another_process(program, tmp_path):
    result = crash([program("killed")], tmp_path)
    assert result.ids == ["signal-sent"]
    evidence = result.evidence("signal-sent")
    assert "SI_USER" in evidence
    if result.via == "handler":  # the sender was alive at dump time: its command is known
        assert "watchdog" in evidence


def test_signal_raised_by_itself_is_sent_by_itself(program, tmp_path):
    result = crash([program("killed"), "self"], tmp_path)
    assert result.ids == ["signal-sent"]  # CONTRACT.md: raise() is a signal sent, too
    annotation = result.annotation("signal-sent")
    assert "by the process itself: raise() called from main" in annotation["title"]
    assert "the process's own pid" in result.evidence("signal-sent")


def test_plain_abort_is_silent(program, tmp_path):
    """A plain abort(): SIGABRT delivered, no message: no rule may claim it."""
    result = crash([program("plain_abort")], tmp_path)
    assert result.ids == []
    assert result.analysis["signal"]["name"] == "SIGABRT"


@pytest.mark.parametrize("mode", ["kill", "trap"])
def test_seccomp_violation(program, tmp_path, mode):
    result = crash([program("seccomp_kill"), mode], tmp_path)
    assert result.ids == ["seccomp-violation"]
    evidence = result.evidence("seccomp-violation")
    assert "SYS_SECCOMP" in evidence and "(63)" in evidence  # __NR_uname on x86-64
    assert "uname" in result.annotation("seccomp-violation")["title"]


def test_sigsys_sent_by_kill_is_not_seccomp(program, tmp_path):
    result = crash(["/bin/sh", "-c", "kill -SYS $$"], tmp_path)
    assert "seccomp-violation" not in result.ids
