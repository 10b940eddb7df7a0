"""Which Debian package installed a mapped file, and its version: dpkg's database.

Most Debian binaries carry no ELF package note, so for the files without one
the fleet record asks dpkg's own files (dpkg(1), "FILES"): each
``/var/lib/dpkg/info/PACKAGE[:ARCH].list`` lists the paths a package
installed, ``/var/lib/dpkg/status`` gives each installed package's version.
Read once per record and only for the paths asked: every ``.list`` is read
and its lines are looked up in the set of wanted paths (no per-path scan), the
search stops when every path is found, and only the ``status`` paragraphs of
the owning packages are parsed.  About 7 MB of lists (717 packages) take
tens of milliseconds here, in the detached analysis job, never in the capture.

Debian's merged /usr: a process maps ``/usr/lib/x86_64-linux-gnu/libc.so.6``
while libc6 lists ``/lib/x86_64-linux-gnu/libc.so.6`` (bookworm), or the
other way round; both spellings are looked up.  Diversions
(dpkg-divert(1)) are not followed: a diverted file reports no package.

*When* the database is read is decided by the caller (fleet.record): it is
read at analysis time, and trusted only for a file whose inode at the path is
still the one the process mapped at dump time.  dpkg unpacks every file of an
upgraded package into a new inode, so an unchanged inode means the package
that installed the file that ran is the one the database names now.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

ADMIN_DIRECTORY = "/var/lib/dpkg"  # dpkg --admindir's default
MERGED_DIRECTORIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # merged /usr
INSTALLED = b"install ok installed"


def spellings(path: str) -> tuple[str, ...]:
    """``path`` and its other spelling across merged /usr (or only ``path``)."""
    parts = path.split("/", 3)  # "", "usr", "lib", rest  or  "", "lib", rest
    if len(parts) >= 3 and parts[1] == "usr" and parts[2] in MERGED_DIRECTORIES:
        return (path, path[len("/usr"):])
    if len(parts) >= 2 and parts[1] in MERGED_DIRECTORIES:
        return (path, "/usr" + path)
    return (path,)


def owners(paths: Iterable[str], admin: str = ADMIN_DIRECTORY) -> dict[str, str]:
    """path -> the owning package as its list file names it (``libc6:amd64``, ``dash``)."""
    wanted: dict[bytes, str] = {}
    for path in paths:
        for spelling in spellings(path):
            wanted.setdefault(os.fsencode(spelling), path)
    found: dict[str, str] = {}
    everything = len(set(wanted.values()))
    info = os.path.join(admin, "info")
    try:
        entries = sorted(entry.name for entry in os.scandir(info) if entry.name.endswith(".list"))
    except OSError:
        return found
    for name in entries:
        try:
            with open(os.path.join(info, name), "rb") as handle:
                lines = handle.read().split(b"\n")
        except OSError:
            continue
        for line in lines:
            owned = wanted.get(line)
            if owned is not None and owned not in found:
                found[owned] = name[:-len(".list")]
        if len(found) == everything:
            break
    return found


def installed(packages: Iterable[str], admin: str = ADMIN_DIRECTORY) -> \
        dict[str, dict[str, str]]:
    """``name[:arch]`` -> {"name", "version", "architecture"} of the installed packages
    among ``packages`` (the status paragraphs of the others are not parsed)."""
    wanted: dict[bytes, list[str]] = {}
    for package in packages:
        wanted.setdefault(os.fsencode(package.split(":", 1)[0]), []).append(package)
    try:
        with open(os.path.join(admin, "status"), "rb") as handle:
            status = handle.read()
    except OSError:
        return {}
    found: dict[str, dict[str, str]] = {}
    for paragraph in status.split(b"\n\n"):
        if not paragraph.startswith(b"Package: "):
            continue
        name = paragraph[len(b"Package: "):paragraph.find(b"\n")]
        if name not in wanted:
            continue
        fields = _fields(paragraph)
        if fields.get("Status", "").encode() != INSTALLED or "Version" not in fields:
            continue
        architecture = fields.get("Architecture", "")
        for package in wanted[name]:
            arch = package.split(":", 1)[1] if ":" in package else None
            if arch in (None, architecture) and package not in found:
                found[package] = {"name": fields["Package"], "version": fields["Version"],
                                  "architecture": architecture}
    return found


def _fields(paragraph: bytes) -> dict[str, str]:
    """The single-line fields of a deb822 paragraph (continuation lines skipped)."""
    fields = {}
    for line in paragraph.decode("utf-8", "replace").split("\n"):
        if line[:1] not in (" ", "\t") and ": " in line:
            key, value = line.split(": ", 1)
            fields[key] = value.strip()
    return fields


def packages(paths: Iterable[str], admin: str = ADMIN_DIRECTORY) -> dict[str, dict[str, str]]:
    """path -> the package record (``type`` deb, ``name``, ``version``, ``architecture``,
    the keys of the ELF package note) for each of ``paths`` an installed package owns."""
    owner = owners(paths, admin)
    known = installed(set(owner.values()), admin)
    return {path: {"type": "deb", **known[package]} for path, package in owner.items()
            if package in known}
