"""What users of C++, Rust, perl and bash crash with (issue 11), through the real kernel.

Each program is built with this machine's g++ or rustc (or is the machine's
perl or bash), crashed under the coredumpd handler, and the annotation is
checked: the right id with its evidence, no wrong one, and the frames it
names as gdb names them (gdb 13 on the same core).
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

from tests.annotate.crashing import PROGRAMS, Crash, crash
from tests.support.fixtures import GdbFrame, parse_gdb_backtrace

pytestmark = pytest.mark.kernel


def gdb_functions(result: Crash, exe: str, tmp_path: pathlib.Path) -> list[str]:
    """gdb's function name for each frame of the crashed thread (``bt`` on the stored core,
    decompressed)."""
    return [frame.function for frame in gdb_frames(result, exe, tmp_path)]


def gdb_frames(result: Crash, exe: str, tmp_path: pathlib.Path) -> list[GdbFrame]:
    """gdb's frames of the crashed thread (``bt`` on the stored core, decompressed)."""
    from coredumpd.store.lz4seek import open_core_source

    raw = tmp_path / "core.raw"
    source = open_core_source(str(result.core_path))
    try:
        with open(raw, "wb") as handle:
            handle.writelines(source.pread(offset, 1 << 20) for offset in range(0, source.size, 1 << 20))
    finally:
        source.close()
    text = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", "bt",
                           exe, str(raw)], capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "DEBUGINFOD_URLS": ""}).stdout
    lines = text.splitlines()
    last_start = max(i for i, line in enumerate(lines) if line.startswith("#0 "))  # gdb
    # prints frame #0 once on loading the core, then the backtrace: parse the backtrace
    threads = parse_gdb_backtrace("\n".join(["Thread 1 (LWP 1):", *lines[last_start:]]))
    assert threads and threads[0].frames, text
    return threads[0].frames


def crashed_symbols(result: Crash) -> list[str | None]:
    thread = next(t for t in result.analysis["threads"] if t["crashed"])
    return [frame.get("symbol") for frame in thread["frames"]]


# ------------------------------------------------------------------ signal-sent, self


@pytest.mark.parametrize(("how", "signal", "call"), [
    ("raise", "SIGSEGV", "raise"), ("tgkill", "SIGBUS", "syscall"), ("kill", "SIGQUIT", "kill")])
def test_signal_sent_by_the_program_itself(program, tmp_path, how, signal, call):
    result = crash([program("selfkill"), how], tmp_path)
    assert result.ids == ["signal-sent"]
    title = result.annotation("signal-sent")["title"]
    assert title == f"{signal} was sent by the process itself: {call}() called from shoot_self"
    evidence = result.evidence("signal-sent")
    assert "the process's own pid" in evidence
    assert "shoot_self+0x" in evidence and "selfkill.c:" in evidence


def test_perl_killing_itself(tmp_path):
    result = crash(["/usr/bin/perl", "-e", 'kill "SEGV", $$'], tmp_path)
    assert result.ids == ["signal-sent"]
    annotation = result.annotation("signal-sent")
    assert "SI_USER" in result.evidence("signal-sent")
    gdb = gdb_functions(result, "/usr/bin/perl", tmp_path)
    ours = crashed_symbols(result)
    assert ours[0] == "kill" and gdb[0] == "__GI_kill"  # gdb: libc's DWARF name
    assert ours[1] == gdb[1] == "Perl_apply"  # the function that sent it, named as gdb does
    assert annotation["title"] == "SIGSEGV was sent by the process itself: kill() called " \
        "from Perl_apply"


def test_bash_killing_itself_is_no_abort(tmp_path):
    """SIGABRT that bash sent itself: not an abort (no abort() on the stack)."""
    result = crash(["/bin/bash", "-c", "kill -ABRT $$"], tmp_path)
    assert result.ids == ["signal-sent"]
    assert "SIGABRT was sent by the process itself: kill() called from kill_builtin" == \
        result.annotation("signal-sent")["title"]
    gdb = gdb_functions(result, "/bin/bash", tmp_path)
    assert crashed_symbols(result)[1] == gdb[1] == "kill_builtin"


# ------------------------------------------------------------------ C++: uncaught-exception


@pytest.fixture(scope="module")
def cxx_program(readable_dir: pathlib.Path) -> str:
    binary = readable_dir / "uncaught"
    subprocess.run(["g++", "-g", "-O1", "-o", str(binary), str(PROGRAMS / "uncaught.cc")],
                   check=True, capture_output=True)
    return str(binary)


def crash_with_stderr(argv: list[str], tmp_path: pathlib.Path) -> tuple[Crash, str]:
    """The crash, and what the program printed on stderr (the runtime's own report)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    stderr = tmp_path / "stderr.txt"
    command = " ".join(f"'{part}'" for part in argv)
    result = crash(["/bin/sh", "-c", f"exec {command} 2>{stderr}"], tmp_path)
    return result, stderr.read_text()


def test_uncaught_runtime_error(cxx_program, tmp_path):
    result, stderr = crash_with_stderr([cxx_program, "runtime"], tmp_path)
    assert result.ids == ["uncaught-exception"]
    # libstdc++'s own words, which the core must give back
    assert "terminate called after throwing an instance of 'std::runtime_error'" in stderr
    assert "what():  config file missing: /etc/app.conf" in stderr
    annotation = result.annotation("uncaught-exception")
    assert annotation["title"] == ("Uncaught C++ exception std::runtime_error: config file "
                                   "missing: /etc/app.conf")
    evidence = result.evidence("uncaught-exception")
    assert "#5 std::terminate() <- #6 __cxa_throw" in evidence
    assert 'exception_class "GNUCC++\\0"' in evidence
    assert 'type: std::runtime_error (std::type_info at 0x' in evidence
    assert 'name "St13runtime_error", derived from std::exception' in evidence
    assert 'what(): "config file missing: /etc/app.conf" (the std::runtime_error message' in evidence
    assert "thrown from frame #7 load_config(char const*)+0x" in evidence
    # frames named as gdb names them: the runtime's from its symbols, ours from DWARF
    gdb = {frame.pc: frame.function for frame in gdb_frames(result, cxx_program, tmp_path)
           if frame.pc is not None}
    thread = next(t for t in result.analysis["threads"] if t["crashed"])
    named = {frame["symbol"]: gdb.get(frame["pc"]) for frame in thread["frames"]}
    assert named["std::terminate()"] == "std::terminate()"
    assert named["__cxa_throw"] == "__cxa_throw"
    assert named["load_config(char const*)"] == "load_config"  # gdb: DWARF name, no params


def test_uncaught_derived_exception_and_its_bases(cxx_program, tmp_path):
    result, stderr = crash_with_stderr([cxx_program, "custom"], tmp_path)
    assert result.ids == ["uncaught-exception"]
    assert "throwing an instance of 'ConfigError'" in stderr
    assert "what():  bad key 'port' in /etc/app.conf" in stderr
    assert result.annotation("uncaught-exception")["title"] == \
        "Uncaught C++ exception ConfigError: bad key 'port' in /etc/app.conf"
    evidence = result.evidence("uncaught-exception")
    assert "derived from std::runtime_error <- std::exception" in evidence


def test_uncaught_int_has_no_what(cxx_program, tmp_path):
    result, stderr = crash_with_stderr([cxx_program, "int"], tmp_path)
    assert "throwing an instance of 'int'" in stderr
    assert result.ids == ["uncaught-exception"]
    assert result.annotation("uncaught-exception")["title"] == "Uncaught C++ exception int"
    assert "what(): not readable" in result.evidence("uncaught-exception")


def test_exception_leaving_noexcept(cxx_program, tmp_path):
    result = crash([cxx_program, "noexcept"], tmp_path)
    assert result.ids == ["uncaught-exception"]
    evidence = result.evidence("uncaught-exception")
    assert "ConfigError" in result.annotation("uncaught-exception")["title"]
    assert "personality routine (__gxx_personality_v0)" in evidence
    assert "noexcept" in evidence
    assert "thrown from frame #" in evidence and "load_config(char const*)" in evidence


def test_uncaught_rethrown_exception_ptr(cxx_program, tmp_path):
    result, stderr = crash_with_stderr([cxx_program, "rethrow"], tmp_path)
    assert "throwing an instance of 'std::out_of_range'" in stderr
    assert "what():  slot 9 of 4" in stderr
    assert result.ids == ["uncaught-exception"]
    assert result.annotation("uncaught-exception")["title"] == \
        "Uncaught C++ exception std::out_of_range: slot 9 of 4"
    evidence = result.evidence("uncaught-exception")
    assert "derived from std::logic_error <- std::exception" in evidence
    assert "std::rethrow_exception(std::__exception_ptr::exception_ptr)" in evidence
    assert "thrown from frame #7 main+0x" in evidence


@pytest.mark.parametrize("how", ["terminate", "abort"])
def test_no_exception_no_annotation(cxx_program, tmp_path, how):
    """std::terminate() without an exception, abort() from C++: no uncaught exception."""
    result = crash([cxx_program, how], tmp_path)
    assert result.ids == []


def test_cxx_signature_groups_by_throwing_function(cxx_program, tmp_path):
    runtime = crash([cxx_program, "runtime"], tmp_path / "a")
    custom = crash([cxx_program, "custom"], tmp_path / "b")
    other = crash([cxx_program, "other"], tmp_path / "c")
    assert runtime.analysis["signature_frames"][0].endswith("!load_config(char const*)")
    assert runtime.analysis["signature"] == custom.analysis["signature"]
    assert other.analysis["signature_frames"][0].endswith("!parse_port(char const*)")
    assert other.analysis["signature"] != runtime.analysis["signature"]


# ------------------------------------------------------------------ Rust: rust-panic


def build_rust(readable_dir: pathlib.Path, name: str, *flags: str) -> str:
    binary = readable_dir / name
    subprocess.run(["rustc", "--edition", "2021", "-g", *flags, "-o", str(binary), "panics.rs"],
                   check=True, capture_output=True, cwd=PROGRAMS)  # Location: "panics.rs"
    return str(binary)


@pytest.fixture(scope="module")
def rust_abort(readable_dir: pathlib.Path) -> str:
    if shutil.which("rustc") is None:
        pytest.skip("rustc is not installed")
    return build_rust(readable_dir, "panics-abort", "-C", "panic=abort")


@pytest.fixture(scope="module")
def rust_unwind(readable_dir: pathlib.Path) -> str:
    if shutil.which("rustc") is None:
        pytest.skip("rustc is not installed")
    return build_rust(readable_dir, "panics-unwind")


RUST_ENV_COMMAND = "RUST_BACKTRACE=0"


def rust_crash(argv: list[str], tmp_path: pathlib.Path) -> tuple[Crash, str]:
    return crash_with_stderr(["/usr/bin/env", RUST_ENV_COMMAND, *argv], tmp_path)


def test_rust_expect_on_none(rust_abort, tmp_path):
    result, stderr = rust_crash([rust_abort, "expect"], tmp_path)
    assert result.ids == ["rust-panic"]
    assert "panicked at panics.rs:11:16:\nthe key must be set" in stderr  # the hook's words
    annotation = result.annotation("rust-panic")
    assert annotation["title"] == "Rust panic: Option::expect() on a None value: the key must be set"
    evidence = result.evidence("rust-panic")
    assert "kind: Option::expect() on a None value (the panic started in " \
        "core::option::expect_failed)" in evidence
    assert "panicked at panics.rs:11:16 (a core::panic::Location at 0x" in evidence
    assert 'message: "the key must be set" (a String on the heap' in evidence
    assert "panic site: frame #" in evidence and " panics::lookup+0x" in evidence
    assert "(panics.rs:11)" in evidence


def test_rust_frames_named_as_gdb_names_them(rust_abort, tmp_path):
    """Our names are the ELF symbols demangled; gdb names functions from DWARF.  They must
    agree wherever gdb's name is not a generic instantiation (gdb prints ``Option<u32>::
    expect<u32>``, the symbol says ``Option<T>::expect``) and the symbol is not one that
    rustc exports under its ``__rustc`` crate."""
    result, _ = rust_crash([rust_abort, "expect"], tmp_path)
    gdb = {frame.pc: frame.function for frame in gdb_frames(result, rust_abort, tmp_path)
           if frame.pc is not None}
    thread = next(t for t in result.analysis["threads"] if t["crashed"])
    compared = 0
    for frame in thread["frames"]:
        symbol, theirs = frame["symbol"], gdb.get(frame["pc"])
        assert symbol is None or not re.search(r"::h[0-9a-f]{16}$|\[[0-9a-f]{16}\]", symbol)
        if theirs is None or "<" in theirs or "{" in theirs or symbol.startswith("__rustc::"):
            continue
        if frame["module"] == rust_abort:
            assert symbol == theirs, frame
            compared += 1
    # std::sys::pal::unix::abort_internal, std::process::abort, core::panicking::panic_fmt,
    # core::option::expect_failed, panics::lookup, panics::run, panics::main
    assert compared >= 7


def test_rust_index_out_of_bounds(rust_abort, tmp_path):
    result, stderr = rust_crash([rust_abort, "index"], tmp_path)
    assert "index out of bounds: the len is 3 but the index is 7" in stderr
    assert result.ids == ["rust-panic"]
    assert result.annotation("rust-panic")["title"] == \
        "Rust panic: index out of bounds: the len is 3 but the index is 7"
    evidence = result.evidence("rust-panic")
    assert "core::panicking::panic_bounds_check" in evidence
    assert "panic site: frame #" in evidence and " panics::run+0x" in evidence


def test_rust_unwrap_on_none(rust_abort, tmp_path):
    result, stderr = rust_crash([rust_abort, "unwrap"], tmp_path)
    assert "called `Option::unwrap()` on a `None` value" in stderr
    evidence = result.evidence("rust-panic")
    assert "kind: Option::unwrap() on a None value" in evidence
    assert 'message: "called `Option::unwrap()` on a `None` value" (a &str' in evidence


def test_rust_panic_in_extern_c_with_unwind(rust_unwind, tmp_path):
    """With the default panic=unwind, a panic that reaches an extern "C" frame aborts."""
    result, stderr = rust_crash([rust_unwind, "extern-c"], tmp_path)
    assert "callback got 3" in stderr and "panic in a function that cannot unwind" in stderr
    assert result.ids == ["rust-panic"]
    evidence = result.evidence("rust-panic")
    assert "panic in a function that cannot unwind" in evidence
    assert "core::panicking::panic_cannot_unwind" in evidence
    assert " panics::callback+0x" in evidence


def test_rust_process_abort_is_no_panic(rust_abort, tmp_path):
    result, _ = rust_crash([rust_abort, "abort"], tmp_path)
    assert result.ids == []


def test_rust_signature_groups_by_panicking_function(rust_abort, tmp_path):
    index, _ = rust_crash([rust_abort, "index"], tmp_path / "a")
    formatted, _ = rust_crash([rust_abort, "format"], tmp_path / "b")
    expect, _ = rust_crash([rust_abort, "expect"], tmp_path / "c")
    assert index.analysis["signature_frames"][0].endswith("!panics::run")
    assert index.analysis["signature"] == formatted.analysis["signature"]
    assert expect.analysis["signature_frames"][0].endswith("!panics::lookup")
    assert expect.analysis["signature"] != index.analysis["signature"]


# ------------------------------------------------------------------ the fixture cores


def fixture_analysis(name: str) -> dict:
    from coredumpd.store.lz4seek import open_core_source
    from tests.support.analysis import analyze_json
    from tests.support.fixtures import load_fixture

    fixture = load_fixture(name)
    source = open_core_source(str(fixture.core_path))
    try:
        return analyze_json(source, exe=str(fixture.binary_path))
    finally:
        source.close()


def test_fixture_cxx_exception():
    """fixtures/cores/cxx-exception (a bare core: no dump-time facts)."""
    analysis = fixture_analysis("cxx-exception")
    assert [a["id"] for a in analysis["annotations"]] == ["uncaught-exception"]
    annotation = analysis["annotations"][0]
    assert annotation["title"] == ("Uncaught C++ exception std::runtime_error: config file "
                                   "missing: /etc/app.conf")
    evidence = "\n".join(annotation["evidence"])
    assert "thrown from frame #7 config::Loader::load(int) const+0x" in evidence
    assert 'what(): "config file missing: /etc/app.conf"' in evidence
    assert analysis["signature_frames"][0].endswith("!config::Loader::load(int) const")


def test_fixture_rust_panic():
    analysis = fixture_analysis("rust-panic")
    assert [a["id"] for a in analysis["annotations"]] == ["rust-panic"]
    annotation = analysis["annotations"][0]
    assert annotation["title"] == "Rust panic: Option::expect() on a None value: the key must be set"
    evidence = "\n".join(annotation["evidence"])
    assert "panicked at rust_panic.rs:5:16" in evidence
    # #16: core::panicking::panic_display is inlined into expect_failed, a frame of its own
    assert "panic site: frame #16 rust_panic::lookup+0x4b (rust_panic.rs:5)" in evidence
    assert analysis["signature_frames"][:2] == ["rust-panic!rust_panic::lookup",
                                                "rust-panic!rust_panic::main"]
