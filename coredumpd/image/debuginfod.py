"""Debug information and executables by build-id from debuginfod servers, elfutils' way.

Used by the analysis only (never by the handler while it holds a crashed
process), when ``DEBUGINFOD_URLS`` is set.  Behaves as elfutils' client
(debuginfod_find_debuginfo(3)), so that gdb, eu-stack and coredumpd share one
cache:

- ``DEBUGINFOD_URLS``: servers, space-separated, asked in order;
  ``GET URL/buildid/HEX/debuginfo`` or ``…/executable``;
- cache ``$DEBUGINFOD_CACHE_PATH``, else ``$XDG_CACHE_HOME/debuginfod_client``, else
  ``$HOME/.cache/debuginfod_client``; a file lands at ``CACHE/HEX/debuginfo`` or
  ``CACHE/HEX/executable`` (written aside, then renamed);
- ``DEBUGINFOD_TIMEOUT`` (default 90 s): the longest wait for a connection or for
  the next data; ``DEBUGINFOD_MAXTIME``: a whole transfer; ``DEBUGINFOD_MAXSIZE``:
  the largest file accepted (0 or unset: no limit).

A file found here is still checked by build-id before it is used
(image/modules.py).  Unlike elfutils, a miss is not cached: ``corectl
reanalyze`` must find what a server got since.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from coredumpd.patterns import Pattern
from coredumpd.values import Frozen

HEX = Pattern(r"[0-9a-f]{2,128}")
KINDS = ("debuginfo", "executable")
DEFAULT_TIMEOUT = 90.0
CHUNK = 1 << 16


def cache_path(env: Mapping[str, str]) -> str | None:
    """elfutils' cache directory for ``env`` (None without any of its variables)."""
    if env.get("DEBUGINFOD_CACHE_PATH"):
        return env["DEBUGINFOD_CACHE_PATH"]
    if env.get("XDG_CACHE_HOME"):
        return os.path.join(env["XDG_CACHE_HOME"], "debuginfod_client")
    if env.get("HOME"):
        return os.path.join(env["HOME"], ".cache", "debuginfod_client")
    return None


def _number(env: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(env.get(key, ""))
    except ValueError:
        return None
    return value if value > 0 else None


class Debuginfod(Frozen):
    """A client: ``urls`` (none: the cache only), ``cache``, elfutils' limits."""

    urls: tuple[str, ...]
    cache: str
    timeout: float = DEFAULT_TIMEOUT
    maxtime: float | None = None
    maxsize: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], cache_only: bool = False) -> Debuginfod | None:
        """The client ``env`` asks for (DEBUGINFOD_URLS set), or None."""
        urls = tuple(url for url in env.get("DEBUGINFOD_URLS", "").split() if url)
        cache = cache_path(env)
        if not urls or cache is None:
            return None
        maxsize = _number(env, "DEBUGINFOD_MAXSIZE")
        return cls(() if cache_only else urls, cache,
                   _number(env, "DEBUGINFOD_TIMEOUT") or DEFAULT_TIMEOUT,
                   _number(env, "DEBUGINFOD_MAXTIME"),
                   int(maxsize) if maxsize else None)

    def settings(self) -> dict[str, object]:
        """JSON for the sandboxed analysis (which reads the cache only)."""
        return {"cache": self.cache}

    def cached(self, build_id: str, kind: str) -> str | None:
        path = self._path(build_id, kind)
        return path if path is not None and os.path.isfile(path) else None

    def _path(self, build_id: str, kind: str) -> str | None:
        if not HEX.fullmatch(build_id) or kind not in KINDS:
            return None
        return os.path.join(self.cache, build_id, kind)

    def find(self, build_id: str, kind: str, problems: list[str]) -> str | None:
        """The cached file, else fetched from the first server that has it; None when
        none has it (each failure other than "not found" goes to ``problems``)."""
        path = self._path(build_id, kind)
        if path is None:
            return None
        if os.path.isfile(path):
            return path
        for url in self.urls:
            try:
                if self._fetch(f"{url.rstrip('/')}/buildid/{build_id}/{kind}", path):
                    return path
            except (OSError, ValueError) as err:
                problems.append(f"debuginfod {url}: {kind} of {build_id}: {err}")
        return None

    def _fetch(self, url: str, path: str) -> bool:
        """Download ``url`` into ``path``; False on HTTP 404."""
        import urllib.error  # only when fetching: http.client imports ssl
        import urllib.request
        try:
            response = urllib.request.urlopen(url, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise
        with response:
            length = int(response.headers.get("Content-Length") or 0)
            if self.maxsize and length > self.maxsize:
                raise ValueError(f"{length} bytes over DEBUGINFOD_MAXSIZE={self.maxsize}")
            directory = os.path.dirname(path)
            if not os.path.isdir(directory):  # readable by the analysis whatever the umask
                os.makedirs(directory, exist_ok=True)
                os.chmod(directory, 0o755)
            self._save(response, path)
        return True

    def _save(self, response: object, path: str) -> None:
        import tempfile  # only to fetch: not on every analysis's start-up

        started = time.monotonic()
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        try:
            size = 0
            while chunk := response.read(CHUNK):  # type: ignore[attr-defined]
                size += len(chunk)
                if self.maxsize and size > self.maxsize:
                    raise ValueError(f"over DEBUGINFOD_MAXSIZE={self.maxsize} bytes")
                if self.maxtime and time.monotonic() - started > self.maxtime:
                    raise ValueError(f"over DEBUGINFOD_MAXTIME={self.maxtime:g} s")
                os.write(handle, chunk)
            os.fchmod(handle, 0o644)
            os.rename(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        finally:
            os.close(handle)
