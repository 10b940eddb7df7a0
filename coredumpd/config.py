"""The configuration file, an INI file shaped like systemd's coredump.conf.

See man/coredumpd.conf.5 and CONTRACT.md.  Sizes take systemd's suffixes
(K, M, G, T, base 1024); time spans take s, min, h, d.  Unknown keys are
ignored with a warning list so that newer files still load in older versions.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re

from coredumpd.errors import ConfigError
from coredumpd.paths import DEFAULT_CONFIG_PATH, DEFAULT_DIRECTORY, index_path

SECTION = "Coredump"

_SIZE_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_TIME_SUFFIXES = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


@dataclasses.dataclass(frozen=True)
class Config:
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
    journal: bool = True
    journal_timeout: float = 0.5
    journal_namespace: str | None = None  # None: the default journal
    warnings: tuple[str, ...] = ()

    @property
    def index_path(self) -> str:
        return index_path(self.directory)


_KEYS: dict[str, tuple[str, object]] = {
    "Directory": ("directory", str),
    "Storage": ("storage", str),
    "ProcessSizeMax": ("process_size_max", parse_size),
    "ExternalSizeMax": ("external_size_max", parse_size),
    "MaxUse": ("max_use", parse_size),
    "KeepFree": ("keep_free", parse_size),
    "BinariesMaxUse": ("binaries_max_use", parse_size),
    "RateLimitIntervalSec": ("rate_limit_interval", parse_timespan),
    "RateLimitBurst": ("rate_limit_burst", int),
    "Analysis": ("analysis", lambda v: _parse_bool(v)),
    "AnalysisTimeoutSec": ("analysis_timeout", parse_timespan),
    "AnalysisMemoryMax": ("analysis_memory_max", parse_size),
    "AnalysisUser": ("analysis_user", str),
    "Journal": ("journal", lambda v: _parse_bool(v)),
    "JournalTimeoutSec": ("journal_timeout", parse_timespan),
    "JournalNamespace": ("journal_namespace", parse_journal_namespace),
}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"invalid boolean {text!r}")


def config_keys() -> tuple[str, ...]:
    """The keys of the [Coredump] section, for the man page and its check."""
    return tuple(_KEYS)


def load_config(path: str | None = None) -> Config:
    """Load ``path`` (or the default file when it exists); defaults otherwise.

    An explicitly named file that does not exist is an error; the default file
    may be absent.
    """
    explicit = path is not None
    path = path or DEFAULT_CONFIG_PATH
    if not os.path.exists(path):
        if explicit:
            raise ConfigError(f"configuration file {path} does not exist")
        return Config()
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except (OSError, UnicodeDecodeError, configparser.Error) as err:
        raise ConfigError(f"cannot read configuration file {path}: {err}") from err
    values: dict[str, object] = {"path": os.path.abspath(path)}
    warnings: list[str] = []
    if parser.has_section(SECTION):
        for key, raw in parser.items(SECTION):
            raw = raw.strip()
            if key not in _KEYS:
                warnings.append(f"{path}: unknown key {key!r} in [{SECTION}] ignored")
                continue
            if raw == "":
                continue  # empty means "the default", as in coredump.conf
            field, convert = _KEYS[key]
            values[field] = convert(raw)  # type: ignore[operator]
    config = Config(**values, warnings=tuple(warnings))  # type: ignore[arg-type]
    if config.storage not in ("external", "none"):
        raise ConfigError(f"{path}: Storage={config.storage} (expected external or none)")
    if not os.path.isabs(config.directory):
        raise ConfigError(f"{path}: Directory={config.directory} is not an absolute path")
    return config
