"""Core file names match systemd-coredump's, and hostile COMMs stay one field."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coredumpd.errors import StoreError
from coredumpd.store.naming import (
    core_filename,
    escape_component,
    normalize_boot_id,
    parse_core_filename,
    read_boot_id,
)

BOOT = "8d2a6e7f0c1b4a5e9f3d2c1b0a998877"


def test_plain_name():
    assert core_filename("sleep", 1000, BOOT, 4242, 1732260902123456) == (
        f"core.sleep.1000.{BOOT}.4242.1732260902123456.lz4")


@pytest.mark.parametrize("comm, escaped", [
    ("a.b", r"a\x2eb"),
    ("../../etc", r"\x2e\x2e\x2f\x2e\x2e\x2fetc"),
    ("my prog", r"my\x20prog"),
    ("back\\slash", r"back\x5cslash"),
    ("tab\tnl\n", r"tab\x09nl\x0a"),
    ("\x1b[31m", r"\x1b[31m"),
    ("\x7f", r"\x7f"),
    ("é", r"\xc3\xa9"),  # xescape without XESCAPE_8_BIT escapes bytes >= 127
    (b"\xff\x00", r"\xff\x00"),
    ("kworker/0:1-ev", r"kworker\x2f0:1-ev"),
])
def test_escape_like_systemd_xescape(comm, escaped):
    assert escape_component(comm) == escaped


def test_surrogateescape_bytes_round_trip():
    comm = b"\xffbad".decode("utf-8", "surrogateescape")
    assert escape_component(comm) == r"\xffbad"


@given(st.binary(max_size=16), st.integers(0, 2**32 - 1), st.integers(1, 2**22),
       st.integers(0, 2**63))
def test_any_comm_stays_in_its_field(comm, uid, pid, usec):
    name = core_filename(comm, uid, BOOT, pid, usec)
    assert "/" not in name and " " not in name
    assert re.fullmatch(r"[\x21-\x7e]+", name)
    parsed = parse_core_filename(name)
    assert parsed is not None
    assert (parsed.comm, parsed.uid, parsed.pid, parsed.timestamp_us) == (comm, uid, pid, usec)
    assert parsed.boot_id == BOOT and parsed.suffix == ".lz4"


def test_parse_rejects_other_names():
    assert parse_core_filename("index.sqlite") is None
    assert parse_core_filename("core.a.b.c") is None
    assert parse_core_filename(f"core.x.0.{BOOT}.1.2.lz4/..") is None


def test_systemd_name_without_suffix_parses():
    parsed = parse_core_filename(f"core.bash.0.{BOOT}.77.1700000000000000.zst")
    assert parsed is not None and parsed.suffix == ".zst" and parsed.comm == b"bash"


def test_boot_id_from_proc():
    boot = read_boot_id()
    assert re.fullmatch(r"[0-9a-f]{32}", boot)
    with open("/proc/sys/kernel/random/boot_id") as handle:
        assert handle.read().strip().replace("-", "") == boot


def test_bad_boot_ids_and_fields(tmp_path):
    assert normalize_boot_id(BOOT.upper()) == BOOT
    with pytest.raises(StoreError):
        normalize_boot_id("not-a-boot-id")
    bad = tmp_path / "boot_id"
    bad.write_text("zz\n")
    with pytest.raises(StoreError):
        read_boot_id(str(bad))
    with pytest.raises(StoreError):
        read_boot_id(str(tmp_path / "absent"))
    with pytest.raises(StoreError):
        core_filename("x", -1, BOOT, 1, 1)
    with pytest.raises(StoreError):
        core_filename("x", 0, BOOT, 0, 1)

