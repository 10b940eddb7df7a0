"""The fleet record: built from the typed crash records, nothing of the core's memory."""

from __future__ import annotations

import json
import pathlib

import pytest

from coredumpd.fleet.record import (
    FleetRecord,
    build_record,
    container_id,
    package_note,
    readable_frames,
    record_json,
)
from coredumpd.ingest.container import describe
from coredumpd.model import (
    AnalysisResult,
    Annotation,
    CrashRecord,
    DisassemblyLine,
    Facts,
    Frame,
    Module,
    SignalInfo,
    Thread,
)
from tests.support.crash import compile_c

DOCKER_ID = "4f" * 32


def crash_record(exe: str = "/usr/bin/prog", build_id: str | None = "ab" * 20) -> CrashRecord:
    frames = [Frame(index=0, pc=0x401000, module=exe, build_id=build_id, offset=0x1000,
                    symbol="parse_header", symbol_offset=4, trust="context"),
              Frame(index=1, pc=0x401100, module=exe, symbol="main", trust="cfi")]
    analysis = AnalysisResult(
        crashed_tid=7, signal=SignalInfo(signo=11, name="SIGSEGV"),
        threads=[Thread(tid=8, frames=[Frame(index=0, pc=1)], registers={"rip": 1}),
                 Thread(tid=7, crashed=True, registers={"rip": 0x401000, "rax": 0x5ec7e7},
                        frames=frames)],
        modules=[Module(path=exe, start=0x400000, end=0x402000, build_id=build_id),
                 Module(path=exe, start=0x402000, end=0x403000, build_id=build_id)],
        disassembly=[DisassemblyLine(address=0x401000, bytes="8b00", text="mov", current=True)],
        annotations=[Annotation(id="null-deref",
                                title="NULL pointer dereference: title from memory",
                                confidence="high", evidence=("secret from memory",),
                                advice="check the pointer")],
        signature="0123456789abcdef0123456789abcdef01234567",
        signature_frames=["prog!parse_header", "prog!main"])
    facts = Facts(proc={"environ": ["PASSWORD=hunter2"], "cmdline": ["prog"]})
    return CrashRecord(pid=42, timestamp_us=1_700_000_000_000_000, id="0123456789ab",
                       boot_id="b" * 32, uid=1000, signal=11, comm="prog", exe=exe,
                       cmdline="prog --flag", cgroup=f"0::/system.slice/docker-{DOCKER_ID}.scope",
                       core_path="/var/lib/coredumpd/core.prog.lz4", facts=facts,
                       analysis=analysis, root_cause="null-deref",
                       signature=analysis.signature)


def test_the_record_has_the_row_signature_frames_modules_and_the_host() -> None:
    record = build_record(crash_record(), host="alpha", machine_id="m" * 32)
    assert (record.crash_id, record.host, record.machine_id) == ("0123456789ab", "alpha",
                                                                 "m" * 32)
    assert record.container_id == DOCKER_ID
    assert record.row["pid"] == 42 and record.row["core_path"].endswith(".lz4")
    assert record.signal_name == "SIGSEGV" and record.root_cause == "null-deref"
    assert [f.symbol for f in record.frames] == ["parse_header", "main"]  # the crashed thread
    assert [m.path for m in record.modules] == ["/usr/bin/prog"]  # one per file
    assert record.modules[0].build_id == "ab" * 20
    assert record.product_version == "build-id abababababab"  # no package note: the build
    assert FleetRecord.from_json(json.loads(record_json(record))) == record


def test_the_record_never_holds_memory_or_the_environment() -> None:
    crash = crash_record()
    assert crash.analysis is not None
    crash.analysis.threads[1].frames[0].cfa = 0x7FFD_1234_5670  # a stack address
    text = record_json(build_record(crash, host="alpha", machine_id=""))
    assert '"cfa"' not in text and str(0x7FFD_1234_5670) not in text
    for secret in ("hunter2", "environ", "secret from memory", "title from memory",
                   "registers", "rax",
                   "disassembly", "facts"):
        assert secret not in text


def test_strings_from_the_process_are_made_acceptable_to_jsonb() -> None:
    record = crash_record()
    record.cmdline = "a\0b \udcff"
    text = record_json(build_record(record, host="h", machine_id=""))
    assert "\\u0000" not in text and "\\udcff" not in text
    assert json.loads(text)["row"]["cmdline"] == "a\\x00b \\xff"


def _facts_of(cgroup: str, pid_namespace_own: bool = True) -> Facts:
    """The facts the handler writes for a process in ``cgroup``: its container as
    ingest/container.py describes it (the index's container_id comes from it too)."""
    proc = {"cgroup": cgroup, "root": "/", "status": {"NSpid": [4242, 1]},
            "namespaces": {"mnt": {"same_as_init": False},
                           "pid": {"same_as_init": not pid_namespace_own}},
            "mountinfo": ["511 480 0:52 / / rw - overlay overlay rw,upperdir=/u,workdir=/w"]}
    return Facts(proc=proc, container=describe(proc))


@pytest.mark.parametrize(("cgroup", "expected"), [
    (f"0::/system.slice/docker-{DOCKER_ID}.scope", DOCKER_ID),
    (f"12:pids:/docker/{DOCKER_ID}\n0::/\n", DOCKER_ID),  # hybrid: only v1 names it
    ("0::/machine.slice/systemd-nspawn@debian.service/payload", "debian"),
    ("0::/machine.slice/machine-fedora.scope", "fedora"),
    ("0::/user.slice/user-1000.slice/session-1.scope", None),
])
def test_container_id_is_the_facts_container_id(cgroup: str, expected: str | None) -> None:
    """The id ingest found (docker's 64 hex digits, an nspawn machine's name), the one
    the index's container_id column and the journal carry; the record's cgroup is the
    v2 path only (store_crash), so a v1-only id is in the facts alone."""
    crash = crash_record()
    crash.facts = _facts_of(cgroup)
    crash.cgroup = cgroup.rsplit("\n0::", 1)[-1].removeprefix("0::").strip()
    crash.container_id = crash.container.get("id") or ""  # as store_crash fills the column
    assert build_record(crash, host="h", machine_id="").container_id == expected
    crash.container_id = ""  # read from the facts when the column is empty
    assert build_record(crash, host="h", machine_id="").container_id == expected


def test_container_id_of_a_row_stored_before_the_facts_had_a_container() -> None:
    crash = crash_record()  # facts without "container"; the docker cgroup
    assert crash.container == {} and not crash.container_id
    assert container_id(crash) == DOCKER_ID
    crash.cgroup = "/machine.slice/machine-fedora.scope"
    assert container_id(crash) == "fedora"  # the ingest's parser, nspawn included
    crash.cgroup = "/system.slice/nginx.service"
    assert container_id(crash) is None


def test_package_versions_come_from_the_elf_package_note(tmp_path: pathlib.Path) -> None:
    metadata = '{"type":"deb","name":"demo","version":"1.2-3","architecture":"amd64"}'
    exe = compile_c("int main(void){return 0;}", tmp_path,
                    flags=("-g", "-Xlinker", f"--package-metadata={metadata}"))
    from coredumpd.elf.elffile import ElfFile
    with ElfFile.open(exe) as elf:
        build_id = elf.build_id.hex() if elf.build_id else None
    assert package_note(exe, build_id) == {"type": "deb", "name": "demo", "version": "1.2-3",
                                           "architecture": "amd64"}
    assert package_note(exe, "00" * 20) is None  # another build: not this file's package
    record = build_record(crash_record(exe=exe, build_id=build_id), host="h", machine_id="")
    assert record.modules[0].package is not None
    assert record.product_version == "1.2-3"


def test_readable_frames_as_socorro_writes_them() -> None:
    assert readable_frames(["prog!parse_header", "prog!main"]) == "parse_header | main"
    assert readable_frames(["prog+0x1139", "libc.so.6!abort"]) == "prog+0x1139 | abort"
