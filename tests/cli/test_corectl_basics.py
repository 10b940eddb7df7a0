"""corectl in-process: arguments, configuration, errors and exit statuses (no crash needed)."""

from __future__ import annotations

import pathlib

import pytest

from coredumpd.cli.corectl import ExitStatus, main


def write_config(tmp_path: pathlib.Path, extra: str = "") -> str:
    path = tmp_path / "c.conf"
    path.write_text(f"[Coredump]\nDirectory={tmp_path / 'store'}\n{extra}")
    return str(path)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], env={}) == ExitStatus.OK
    assert "analyze" in capsys.readouterr().out


def test_usage_error_exits_two(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--bogus"], env={}) == ExitStatus.USAGE
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main([], env={}) == ExitStatus.USAGE


def test_missing_config_file_is_an_error(capsys: pytest.CaptureFixture[str],
                                         tmp_path: pathlib.Path) -> None:
    status = main(["--config", str(tmp_path / "nope.conf"), "list"], env={})
    assert status == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert err.startswith("corectl: error: config error: configuration file")
    assert "Traceback" not in err


def test_invalid_config_value(capsys: pytest.CaptureFixture[str],
                              tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, "Storage=floppy\n")
    assert main(["--config", config, "list"], env={}) == ExitStatus.USAGE
    assert "Storage=floppy" in capsys.readouterr().err


def test_config_typo_is_a_config_error_with_the_usage_status(
        capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    """Not "internal error: ValueError" (issue 9): the key, the line, status 2."""
    config = write_config(tmp_path, "RateLimitBurst=abc\n")
    for argv in (["list"], ["--json", "show"], ["vacuum"]):
        assert main(["--config", config, *argv], env={}) == ExitStatus.USAGE == 2
        err = capsys.readouterr().err
        assert err == (f"corectl: error: config error: {config} line 3: RateLimitBurst=abc:"
                       " invalid number 'abc' (expected a whole number, e.g. 10)\n")


def test_empty_store_says_no_coredumps_found(capsys: pytest.CaptureFixture[str],
                                            tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path)
    for argv in (["list"], ["show"], ["info", "1234"], ["dump", "-o", "x"], ["debug"]):
        assert main(["--config", config, *argv], env={}) == ExitStatus.NO_MATCH
        captured = capsys.readouterr()
        assert captured.err == "No coredumps found.\n" and captured.out == ""
    assert not (tmp_path / "store").exists()  # corectl never creates the store


def test_config_from_the_environment(capsys: pytest.CaptureFixture[str],
                                     tmp_path: pathlib.Path) -> None:
    env = {"COREDUMPD_CONFIG": str(tmp_path / "missing.conf")}
    assert main(["list"], env=env) == ExitStatus.USAGE
    assert "missing.conf" in capsys.readouterr().err
    # --config wins over the environment
    assert main(["--config", write_config(tmp_path), "list"], env=env) == ExitStatus.NO_MATCH


def test_options_after_the_command(tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path)
    assert main(["list", "--config", config, "--json", "--no-pager"], env={}) == 1


def test_unknown_config_keys_warn(capsys: pytest.CaptureFixture[str],
                                  tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path, "Frobnicate=yes\n")
    main(["--config", config, "list"], env={})
    assert "corectl: warning:" in capsys.readouterr().err


def test_bad_time_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str],
                                              tmp_path: pathlib.Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "index.sqlite").write_bytes(b"")
    assert main(["--config", config, "list", "--since", "next tuesday"], env={}) == 3
    err = capsys.readouterr().err
    assert "invalid time 'next tuesday'" in err and "Traceback" not in err


def test_analyze_of_a_missing_or_non_core_file(capsys: pytest.CaptureFixture[str],
                                               tmp_path: pathlib.Path) -> None:
    assert main(["analyze", str(tmp_path / "nothing")], env={}) == ExitStatus.ERROR
    assert capsys.readouterr().err.startswith("corectl: error: cannot open")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a core at all")
    assert main(["analyze", str(junk)], env={}) == ExitStatus.ERROR
    assert "corectl: error:" in capsys.readouterr().err


def test_copy_core_reports_progress() -> None:
    import io

    from coredumpd.cli.cores import CHUNK, copy_core
    from coredumpd.source import BytesSource

    data = bytes(range(256)) * (CHUNK // 128 + 3)  # a bit over two chunks
    target = io.BytesIO()
    seen: list[tuple[int, int]] = []
    assert copy_core(BytesSource(data), target, lambda done, total: seen.append((done, total)))
    assert target.getvalue() == data
    assert [done for done, _ in seen] == [CHUNK, 2 * CHUNK, len(data)]
    assert {total for _, total in seen} == {len(data)}


def test_debug_flag_adds_the_traceback(capsys: pytest.CaptureFixture[str],
                                       tmp_path: pathlib.Path) -> None:
    argv = ["--config", str(tmp_path / "nope.conf"), "list"]
    assert main([*argv, "--debug"], env={}) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigFileError" in err
    assert err.rstrip().endswith("nope.conf does not exist")
