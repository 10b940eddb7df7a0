"""The configuration file, an INI file shaped like systemd's coredump.conf.

See man/coredumpd.conf.5 and CONTRACT.md.  Sizes take systemd's suffixes
(K, M, G, T, base 1024); time spans take s, min, h, d.  Unknown keys and
sections are ignored with a warning so that newer files still load in older
versions.

Every key is one row of :data:`KEYS` (section, name, Config field, parser), so
a new key or section is one row and one :class:`Config` field.  The file is
read by :func:`read_ini`, a small reader that keeps each value's line number
(configparser does not), so that every complaint names the file, the line and
the key.  Two ways to load it:

- :func:`load_config` (``strict=True``, for ``coredumpd install`` and corectl):
  any value that cannot be read is a :class:`ConfigFileError` listing them all;
- ``strict=False`` (the handler, at crash time): such a value keeps its default
  and is listed in :attr:`Config.errors`, so that a typo never loses a crash.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from coredumpd.errors import ConfigError
from coredumpd.paths import DEFAULT_CONFIG_PATH, DEFAULT_DIRECTORY, index_path
from coredumpd.values import Frozen

SECTION = "Coredump"
FLEET_SECTION = "Fleet"  # publishing to a fleet database (docs/FLEET.md)
MAX_CONFIG_BYTES = 1 << 20  # a configuration file larger than this is not one

_SIZE_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_TIME_SUFFIXES = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigFileError(ConfigError):
    """The configuration file cannot be used: unreadable, or values that cannot be read.

    ``problems`` holds one :class:`ConfigProblem` per bad line (empty when the
    file itself cannot be read)."""

    def __init__(self, message: str, problems: tuple[ConfigProblem, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class ConfigProblem(Frozen):
    """One line of the file that cannot be used, and why."""

    path: str
    line: int
    key: str | None  # None for a line that is not KEY=VALUE at all
    message: str

    def __str__(self) -> str:
        where = f"{self.path} line {self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def parse_size(text: str) -> int:
    """Parse ``32G``/``512M``/``4096`` into bytes (base 1024, like systemd)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTPB]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"invalid size {text!r} (expected e.g. 512M, 4G)")
    number, suffix = match.groups()
    return int(float(number) * _SIZE_SUFFIXES[suffix.upper()])


def parse_timespan(text: str) -> float:
    """Parse ``30s``/``5min``/``2h``/``7d`` into seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text)
    if not match or match.group(2) not in _TIME_SUFFIXES:
        raise ConfigError(f"invalid time span {text!r} (expected e.g. 30s, 5min, 7d)")
    return float(match.group(1)) * _TIME_SUFFIXES[match.group(2)]


# systemd's log_namespace_name_valid() (src/basic/syslog-util.c): a file name that fits
# "/var/log/journal/<machine-id>.<namespace>" (255 - 32 - 1 characters), a unit
# instance name (letters, digits, ":-_.\\" and "@"), no unsafe characters (the
# backslash) and no glob characters.
_NAMESPACE_MAX = 255 - 32 - 1
_NAMESPACE_CHARS = re.compile(r"[A-Za-z0-9:_.@-]+")


def parse_journal_namespace(text: str) -> str:
    """A journal namespace name as systemd accepts it (``LogNamespace=``)."""
    if (not _NAMESPACE_CHARS.fullmatch(text) or text in (".", "..")
            or len(text) > _NAMESPACE_MAX):
        raise ConfigError(f"invalid journal namespace {text!r} (expected up to "
                          f"{_NAMESPACE_MAX} of A-Z a-z 0-9 : _ . @ -)")
    return text


def parse_count(text: str) -> int:
    """A non-negative decimal integer."""
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise ConfigError(f"invalid number {text!r} (expected a whole number, e.g. 10)")
    return int(text)


def parse_bool(text: str) -> bool:
    """yes/no, true/false, on/off, 1/0 (systemd's parse_boolean)."""
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"invalid boolean {text!r} (expected yes or no)")


def parse_absolute_path(text: str) -> str:
    if not os.path.isabs(text):
        raise ConfigError(f"{text!r} is not an absolute path")
    return text


def parse_storage(text: str) -> str:
    if text not in ("external", "none"):
        raise ConfigError(f"invalid storage {text!r} (expected external or none)")
    return text


def parse_urls(text: str) -> tuple[str, ...]:
    """Space-separated http:// or https:// URLs, as DEBUGINFOD_URLS holds them."""
    urls = tuple(text.split())
    for url in urls:
        if not re.fullmatch(r"https?://[^/?#\s]+(/\S*)?", url):
            raise ConfigError(f"invalid URL {url!r} (expected http://HOST[:PORT][/PATH] "
                              "or https://…, separated by spaces)")
    return urls


def parse_user(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?", text):
        raise ConfigError(f"invalid user name {text!r}")
    return text


class Config(Frozen):
    """Settings for the handler, the analysis and corectl."""

    path: str | None = None
    directory: str = DEFAULT_DIRECTORY
    storage: str = "external"  # external | none
    process_size_max: int = 32 << 30
    external_size_max: int = 32 << 30
    max_use: int | None = None  # None: 10% of the file system, at most 4G
    keep_free: int | None = None  # None: 15% of the file system, at most 4G
    binaries_max_use: int = 1 << 30  # kept copies of mapped files (store/binaries.py)
    # Rate limit per executable: more than rate_limit_burst crashes within
    # rate_limit_interval seconds keep metadata and backtrace, not the core.
    rate_limit_interval: float = 60.0
    rate_limit_burst: int = 10
    analysis: bool = True
    analysis_timeout: float = 120.0
    analysis_memory_max: int = 2 << 30
    analysis_user: str = "nobody"
    analysis_cache: bool = True  # the module cache (DIR/cache) for the handler's analyses
    debuginfod_urls: tuple[str, ...] = ()  # servers the handler's analysis asks; () = none
    journal: bool = True
    journal_timeout: float = 0.5
    journal_namespace: str | None = None  # None: the default journal
    fleet_database: str = ""  # [Fleet] Database=: libpq URI; "" = no publishing
    fleet_host: str = ""  # [Fleet] Host=: the host name reported; "" = this host's
    warnings: tuple[str, ...] = ()  # unknown keys and sections, repeated keys
    errors: tuple[str, ...] = ()  # values not read (strict=False): their defaults are used

    @property
    def index_path(self) -> str:
        return index_path(self.directory)


class Key(Frozen):
    """One configuration key: where it is, which Config field it sets, how it is read."""

    section: str
    name: str
    field: str
    parse: Callable[[str], object]


KEYS: tuple[Key, ...] = (
    Key(SECTION, "Directory", "directory", parse_absolute_path),
    Key(SECTION, "Storage", "storage", parse_storage),
    Key(SECTION, "ProcessSizeMax", "process_size_max", parse_size),
    Key(SECTION, "ExternalSizeMax", "external_size_max", parse_size),
    Key(SECTION, "MaxUse", "max_use", parse_size),
    Key(SECTION, "KeepFree", "keep_free", parse_size),
    Key(SECTION, "BinariesMaxUse", "binaries_max_use", parse_size),
    Key(SECTION, "RateLimitIntervalSec", "rate_limit_interval", parse_timespan),
    Key(SECTION, "RateLimitBurst", "rate_limit_burst", parse_count),
    Key(SECTION, "Analysis", "analysis", parse_bool),
    Key(SECTION, "AnalysisTimeoutSec", "analysis_timeout", parse_timespan),
    Key(SECTION, "AnalysisMemoryMax", "analysis_memory_max", parse_size),
    Key(SECTION, "AnalysisUser", "analysis_user", parse_user),
    Key(SECTION, "AnalysisCache", "analysis_cache", parse_bool),
    Key(SECTION, "DebuginfodURLs", "debuginfod_urls", parse_urls),
    Key(SECTION, "Journal", "journal", parse_bool),
    Key(SECTION, "JournalTimeoutSec", "journal_timeout", parse_timespan),
    Key(SECTION, "JournalNamespace", "journal_namespace", parse_journal_namespace),
    Key(FLEET_SECTION, "Database", "fleet_database", str),
    Key(FLEET_SECTION, "Host", "fleet_host", str),
)
_BY_NAME = {(key.section, key.name): key for key in KEYS}
_FIELDS = set(Config._fields)
assert all(key.field in _FIELDS for key in KEYS), "every key sets a Config field"


def config_keys(section: str = SECTION) -> tuple[str, ...]:
    """The keys of ``section``, for the man page and its check."""
    return tuple(key.name for key in KEYS if key.section == section)


def fleet_keys() -> tuple[str, ...]:
    """The keys of the [Fleet] section."""
    return config_keys(FLEET_SECTION)


def default_value(field: str) -> object:
    """The default of a :class:`Config` field (what a value that cannot be read becomes)."""
    return getattr(Config(), field)


class Entry(Frozen):
    """One ``KEY=VALUE`` line: its section, key, value (comment removed) and line number."""

    section: str | None
    key: str
    value: str
    line: int


def read_ini(text: str, path: str) -> tuple[list[Entry], list[ConfigProblem]]:
    """The ``KEY=VALUE`` lines of an INI text with their line numbers, and the lines
    that are neither that, a ``[Section]``, a comment (``#``, ``;``) nor empty."""
    entries: list[Entry] = []
    problems: list[ConfigProblem] = []
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif "=" in line and line.split("=", 1)[0].strip():
            key, value = (part.strip() for part in line.split("=", 1))
            entries.append(Entry(section, key, strip_inline_comment(value), number))
        else:
            problems.append(ConfigProblem(path, number, None,
                                          f"not KEY=VALUE or [Section]: {line[:60]!r}"))
    return entries, problems


def strip_inline_comment(value: str) -> str:
    """``#`` or ``;`` after white space starts a comment (as configparser's
    inline_comment_prefixes did): ``Directory=/x   # where``."""
    for index, char in enumerate(value):
        if char in "#;" and index > 0 and value[index - 1].isspace():
            return value[:index].rstrip()
    return value


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"configuration file {path} is over {MAX_CONFIG_BYTES} bytes")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"cannot read configuration file {path}: {err}") from err


def _apply(entries: list[Entry], path: str) -> tuple[dict[str, object], list[str],
                                                      list[ConfigProblem]]:
    """Field values from the entries; warnings; values that could not be read."""
    values: dict[str, object] = {}
    warnings: list[str] = []
    problems: list[ConfigProblem] = []
    seen: dict[tuple[str | None, str], int] = {}
    for entry in entries:
        if entry.section is None:
            problems.append(ConfigProblem(path, entry.line, entry.key,
                                          f"outside any section (expected [{SECTION}] first)"))
            continue
        key = _BY_NAME.get((entry.section, entry.key))
        if key is None:
            warnings.append(f"{path} line {entry.line}: unknown key {entry.key!r} in "
                            f"[{entry.section}] ignored")
            continue
        if (entry.section, entry.key) in seen:
            warnings.append(f"{path} line {entry.line}: {entry.key} repeats line "
                            f"{seen[entry.section, entry.key]}; the last one counts")
        seen[entry.section, entry.key] = entry.line
        if entry.value == "":
            values.pop(key.field, None)  # empty means "the default", as in coredump.conf
            continue
        try:
            values[key.field] = key.parse(entry.value)
        except ConfigError as err:
            values.pop(key.field, None)
            problems.append(ConfigProblem(path, entry.line, f"{key.name}={entry.value}", str(err)))
    return values, warnings, problems


def load_config(path: str | None = None, *, strict: bool = True) -> Config:
    """Load ``path`` (or the default file when it exists); defaults otherwise.

    An explicitly named file that does not exist is an error; the default file
    may be absent.  ``strict``: a value or line that cannot be read is a
    :class:`ConfigFileError` naming each key and line; else that key keeps its
    default, and the problem is listed in ``errors``.  An unreadable file is an
    error in both modes (the caller decides: the handler uses the defaults).
    """
    explicit = path is not None
    path = path or DEFAULT_CONFIG_PATH
    if not os.path.exists(path):
        if explicit:
            raise ConfigFileError(f"configuration file {path} does not exist")
        return Config()
    entries, problems = read_ini(_read_text(path), path)
    values, warnings, bad_values = _apply(entries, path)
    problems = sorted(problems + bad_values, key=lambda problem: problem.line)
    if problems and strict:
        raise ConfigFileError("; ".join(str(problem) for problem in problems), tuple(problems))
    errors = tuple(f"{problem}; ignored" if problem.key is None else
                   f"{problem}; {_default_text(problem.key)}" for problem in problems)
    return Config(path=os.path.abspath(path), warnings=tuple(warnings), errors=errors,
                  **values)  # type: ignore[arg-type]


def _default_text(key_and_value: str) -> str:
    name = key_and_value.split("=", 1)[0]
    for key in KEYS:
        if key.name == name:
            default = default_value(key.field)
            return f"the default {name}={'(automatic)' if default is None else default} is used"
    return "the default is used"
