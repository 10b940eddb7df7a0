"""coredumpd install / uninstall against the real kernel.core_pattern (lock held)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from coredumpd import paths
from coredumpd.errors import ConfigError
from coredumpd.pipeline import install
from tests.support.kernel import CORE_PATTERN, CORE_PIPE_LIMIT, core_pattern


def _read(path):
    with open(path) as handle:
        return handle.read().rstrip("\n")


def test_pattern_has_the_specifiers_and_fits():
    pattern = install.build_pattern("/usr/bin/coredumpd", "/etc/coredumpd/coredumpd.conf")
    assert pattern == ("|/usr/bin/coredumpd %P %i %p %u %g %s %t %c %h %d %F"
                       " --config /etc/coredumpd/coredumpd.conf")
    assert len(pattern) <= 127


def test_pattern_over_the_kernel_limit_is_refused():
    with pytest.raises(ConfigError, match="over the kernel's limit of 127"):
        install.build_pattern("/usr/bin/coredumpd", "/etc/" + "x" * 80 + ".conf")
    with pytest.raises(ConfigError, match="white space"):
        install.build_pattern("/opt/core dumpd/coredumpd")


@pytest.mark.kernel
def test_install_then_uninstall_restores(tmp_path):
    config = tmp_path / "c.conf"
    config.write_text("[Coredump]\n")
    saved = tmp_path / "saved-sysctl"
    with core_pattern("|/bin/false before", 3):
        pattern = install.install(str(config), saved_path=str(saved), handler="/x/coredumpd")
        assert _read(CORE_PATTERN) == pattern
        assert pattern.startswith("|/x/coredumpd %P %i ") and pattern.endswith(str(config))
        assert _read(CORE_PIPE_LIMIT) == str(install.PIPE_LIMIT)
        install.install(str(config), saved_path=str(saved), handler="/x/coredumpd")  # again
        assert json.loads(saved.read_text())["core_pattern"] == "|/bin/false before"
        install.uninstall(saved_path=str(saved), launcher_dir=str(tmp_path / "none"))
        assert _read(CORE_PATTERN) == "|/bin/false before"
        assert _read(CORE_PIPE_LIMIT) == "3"
        assert not saved.exists()


@pytest.mark.kernel
def test_install_creates_the_store_with_the_stores_mode(tmp_path):
    """install runs before the first crash: the saved values' directory is the store,
    and a user must be able to traverse it to the core its ACL opens (it was 0750)."""
    store = tmp_path / "store"
    with core_pattern("|/bin/false before", 3):
        old_umask = os.umask(0o077)
        try:
            install.install(None, saved_path=str(store / "saved-sysctl"), handler="/x/coredumpd")
        finally:
            os.umask(old_umask)
    assert store.stat().st_mode & 0o777 == paths.DIRECTORY_MODE == 0o751


@pytest.mark.kernel
def test_cli_refuses_long_pattern_and_changes_nothing(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    config = deep / "coredumpd.conf"
    config.write_text("[Coredump]\n")
    with core_pattern("|/bin/false untouched", 5):
        out = subprocess.run([sys.executable, "-m", "coredumpd.pipeline.main", "install",
                              "--config", str(config)], check=False, capture_output=True,
                             text=True)
        assert out.returncode == 1
        assert "coredumpd: error:" in out.stderr and "127" in out.stderr
        assert _read(CORE_PATTERN) == "|/bin/false untouched"
        assert _read(CORE_PIPE_LIMIT) == "5"


@pytest.mark.parametrize(("mem_total_kib", "limit"), [
    (512 << 10, 64), (2 << 20, 64), (24 << 20, 768), (64 << 20, 1024)])
def test_pipe_limit_scales_with_memory(tmp_path, mem_total_kib, limit):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {mem_total_kib} kB\nMemFree:  1 kB\n")
    assert install.pipe_limit(str(meminfo)) == limit
    assert install.pipe_limit(str(tmp_path / "none")) == install.PIPE_LIMIT_MIN


@pytest.mark.kernel
def test_install_refuses_a_config_it_cannot_read_and_changes_nothing(tmp_path):
    """A typo names its key and line, and nothing is installed (issue 9)."""
    config = tmp_path / "c.conf"
    config.write_text("[Coredump]\nDirectory=/var/crash\nRateLimitBurst=abc\n")
    with core_pattern("|/bin/false untouched", 5):
        out = subprocess.run([sys.executable, "-m", "coredumpd.pipeline.main", "install",
                              "--config", str(config)], check=False, capture_output=True,
                             text=True)
        assert out.returncode == 1
        assert out.stderr == (f"coredumpd: error: {config} line 3: RateLimitBurst=abc: invalid"
                              " number 'abc' (expected a whole number, e.g. 10)"
                              " (nothing installed)\n")
        assert _read(CORE_PATTERN) == "|/bin/false untouched"
        assert _read(CORE_PIPE_LIMIT) == "5"
        with pytest.raises(ConfigError, match=r"line 2: Storage=floppy: "):
            config.write_text("[Coredump]\nStorage=floppy\n")
            install.install(str(config), saved_path=str(tmp_path / "saved"), handler="/x/c")
        assert _read(CORE_PATTERN) == "|/bin/false untouched"
        assert not (tmp_path / "saved").exists()


def test_uninstall_without_saved_values(tmp_path):
    with pytest.raises(ConfigError, match="nothing to restore"):
        install.uninstall(saved_path=str(tmp_path / "none"), launcher_dir=str(tmp_path))


@pytest.mark.kernel
def test_uninstall_removes_the_launcher_it_installed(tmp_path):
    import tempfile
    short = pathlib.Path(tempfile.mkdtemp(prefix="cdi", dir="/tmp"))  # the pattern's 127 bytes
    config = short / "c.conf"
    config.write_text("[Coredump]\n")
    saved, launchers = tmp_path / "saved-sysctl", short / "lib"
    with core_pattern("|/bin/false before", 3):
        pattern = install.install(str(config), saved_path=str(saved),
                                  launcher_dir=str(launchers))
        launcher = launchers / "coredumpd"
        assert pattern.startswith(f"|{launcher} %P ") and launcher.exists()
        install.uninstall(saved_path=str(saved), launcher_dir=str(launchers))
        assert _read(CORE_PATTERN) == "|/bin/false before"
        assert not launcher.exists() and not launchers.exists()
    config.unlink()
    short.rmdir()


def test_launcher_kept_when_the_restored_pattern_runs_it(tmp_path):
    launcher = install.write_launcher(str(tmp_path / "lib"))
    assert not install.remove_launcher(str(tmp_path / "lib"), keep_if_used_by=f"|{launcher} %P")
    assert os.path.exists(launcher)
    assert install.remove_launcher(str(tmp_path / "lib"), keep_if_used_by="core")
    assert not os.path.exists(launcher)


def test_launcher_starts_the_handler_without_site(tmp_path):
    launcher = install.write_launcher(str(tmp_path / "bin"))
    assert os.stat(launcher).st_mode & 0o777 == 0o755
    with open(launcher) as handle:
        assert handle.readline().rstrip().endswith(" -IS")
    code = ("from coredumpd.pipeline import main; "
            "print(sys.flags.no_site, sys.flags.isolated, 'site' in sys.modules)")
    out = subprocess.run([launcher, "install", "--help"], env={}, cwd="/", check=True,
                         capture_output=True, text=True)
    assert "--config FILE" in out.stdout
    text = pathlib.Path(launcher).read_text().replace("from coredumpd.pipeline.main import main\n"
                                                      "sys.exit(main())\n", code + "\n")
    probe = tmp_path / "probe"
    probe.write_text(text)
    probe.chmod(0o755)
    flags = subprocess.run([str(probe)], env={}, cwd="/", check=True, capture_output=True,
                           text=True).stdout.strip()
    assert flags == "1 1 False"  # -S and -I from the shebang; the package found anyway


def test_saved_values_one_reader_and_writer(tmp_path):
    """install's values and the daemon's supervisor record share one file, replaced
    whole; uninstall's reader wants both sysctls as strings, the lenient one gives {}."""
    from coredumpd.pipeline import saved
    path = str(tmp_path / "store" / "saved-sysctl")
    assert saved.load(path) == {}
    saved.write(path, {"core_pattern": "core", "core_pipe_limit": "0"})
    values = saved.load(path)
    values["supervisor"] = {"pid": 1, "start_ticks": 2}
    saved.write(path, values)
    assert saved.previous_sysctls(path) == {"core_pattern": "core", "core_pipe_limit": "0"}
    assert saved.load(path)["supervisor"] == {"pid": 1, "start_ticks": 2}
    assert os.listdir(tmp_path / "store") == ["saved-sysctl"]  # no temporary file left
    for text in ('["core"]', '{"core_pattern": "core"}',
                 '{"core_pattern": "core", "core_pipe_limit": 3}', "{"):
        pathlib.Path(path).write_text(text)
        assert saved.load(path) == ({} if not text.startswith('{"') else json.loads(text))
        with pytest.raises(ValueError):
            saved.previous_sysctls(path)


@pytest.mark.kernel
def test_uninstall_refuses_saved_values_it_cannot_use_and_changes_nothing(tmp_path):
    saved = tmp_path / "saved-sysctl"
    saved.write_text('{"core_pattern": "core"}')
    with core_pattern("|/bin/false untouched", 5):
        with pytest.raises(ConfigError, match="cannot restore from .*core_pipe_limit"):
            install.uninstall(saved_path=str(saved), launcher_dir=str(tmp_path / "none"))
        assert _read(CORE_PATTERN) == "|/bin/false untouched"
        assert _read(CORE_PIPE_LIMIT) == "5"
    assert saved.exists()


def _other_coredumpd(config: str) -> str:
    """The pipe pattern of another coredumpd (another checkout, a test's configuration)."""
    from coredumpd.ingest.args import PATTERN_ARGS
    return f"|/usr/bin/true {PATTERN_ARGS} --config {config}"


@pytest.mark.kernel
def test_a_coredumpd_pattern_in_force_never_replaces_the_saved_values(tmp_path):
    """`coredumpd install` run while another coredumpd's pattern (a test's) or a socket
    pattern is in force keeps the values saved before coredumpd; a foreign pattern that
    an administrator set since is saved as the new previous one."""
    config = tmp_path / "c.conf"
    config.write_text("[Coredump]\n")
    saved = tmp_path / "saved-sysctl"
    saved.write_text('{"core_pattern": "|/bin/false before", "core_pipe_limit": "3"}')
    for in_force in (_other_coredumpd("/tmp/cdgone/c.conf"), f"@@{tmp_path}/s.sock"):
        with core_pattern(in_force, 16):
            install.install(str(config), saved_path=str(saved), handler="/x/coredumpd")
        assert json.loads(saved.read_text()) == {"core_pattern": "|/bin/false before",
                                                 "core_pipe_limit": "3"}
    with core_pattern("|/bin/true foreign", 7):
        install.install(str(config), saved_path=str(saved), handler="/x/coredumpd")
    assert json.loads(saved.read_text()) == {"core_pattern": "|/bin/true foreign",
                                             "core_pipe_limit": "7"}


def test_patterns_that_would_lose_every_crash(tmp_path):
    import socket
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(tmp_path / "live.sock"))
    (tmp_path / "plain").write_text("")
    config = tmp_path / "c.conf"
    config.write_text("[Coredump]\n")
    try:
        reason = install.lost_crashes_reason
        assert reason("core") is None and reason("/var/crash/core.%P") is None
        assert reason("|/bin/false before") is None
        assert reason(_other_coredumpd(str(config))) is None
        assert reason(f"@@{tmp_path}/live.sock") is None
        assert reason("|/nonexistent/handler %P") == "its program /nonexistent/handler is not there"
        assert reason(f"|{tmp_path}/plain %P") == f"its program {tmp_path}/plain is not there"
        assert reason(_other_coredumpd(f"{tmp_path}/gone.conf")) == \
            f"its configuration file {tmp_path}/gone.conf is not there"
        assert reason(f"@@{tmp_path}/none.sock") == f"no socket is at {tmp_path}/none.sock"
        assert reason(f"@{tmp_path}/plain") == f"no socket is at {tmp_path}/plain"
    finally:
        listening.close()
    assert install.is_coredumpd_pattern(_other_coredumpd("/x.conf"))
    assert install.is_coredumpd_pattern(_other_coredumpd("/x.conf").split(" --config")[0])
    assert not install.is_coredumpd_pattern("|/usr/bin/true %P %i")
    assert not install.is_coredumpd_pattern(_other_coredumpd("/x.conf") + " extra")


@pytest.mark.kernel
@pytest.mark.parametrize("gone", ["program", "config", "socket"])
def test_uninstall_restores_the_default_rather_than_a_pattern_that_loses_crashes(tmp_path,
                                                                                  gone):
    """The values were saved while a test's pattern was in force (its handler's
    configuration, its socket, removed since) or the program was uninstalled since:
    restoring it would lose every crash, so uninstall writes the kernel's default and
    says which pattern it did not restore and why."""
    pattern = {"program": "|/nonexistent/handler %P",
               "config": _other_coredumpd(f"{tmp_path}/gone.conf"),
               "socket": f"@@{tmp_path}/gone.sock"}[gone]
    saved = tmp_path / "saved-sysctl"
    saved.write_text(json.dumps({"core_pattern": pattern, "core_pipe_limit": "16"}))
    with core_pattern("|/bin/false current", 5):
        restored = install.uninstall(saved_path=str(saved), launcher_dir=str(tmp_path / "none"))
        assert _read(CORE_PATTERN) == "core" and _read(CORE_PIPE_LIMIT) == "16"
    assert restored["core_pattern"] == "core" and restored["not_restored"] == pattern
    assert restored["reason"] == install.lost_crashes_reason(pattern)
    assert not saved.exists()
