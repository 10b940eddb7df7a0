"""coredumpd.config: every complaint names the file, the line and the key; the
handler's reading (strict=False) keeps the default of a value it cannot read."""

from __future__ import annotations

import pytest

from coredumpd.config import Config, ConfigFileError, config_keys, load_config

GOOD = """# coredumpd.conf
[Coredump]
Directory = /var/crash/x   # inline comment
; another comment
RateLimitBurst=3
MaxUse=
Analysis=no
"""


def write(tmp_path, text):
    path = tmp_path / "c.conf"
    path.write_text(text)
    return str(path)


def test_good_file(tmp_path):
    config = load_config(write(tmp_path, GOOD))
    assert (config.directory, config.rate_limit_burst, config.max_use, config.analysis) == \
        ("/var/crash/x", 3, None, False)
    assert config.errors == () and config.warnings == ()


def test_bad_value_names_file_line_and_key(tmp_path):
    path = write(tmp_path, "[Coredump]\nStorage=external\nRateLimitBurst=abc\n")
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    assert str(caught.value) == (f"{path} line 3: RateLimitBurst=abc: invalid number 'abc'"
                                 " (expected a whole number, e.g. 10)")
    assert [(p.line, p.key) for p in caught.value.problems] == [(3, "RateLimitBurst=abc")]


@pytest.mark.parametrize("line", ["Storage=floppy", "Directory=relative", "Analysis=maybe",
                                  "MaxUse=lots", "RateLimitIntervalSec=soon",
                                  "RateLimitBurst=-1", "AnalysisUser=a b"])
def test_every_bad_value_is_refused(tmp_path, line):
    with pytest.raises(ConfigFileError, match=f"line 2: {line}: "):
        load_config(write(tmp_path, f"[Coredump]\n{line}\n"))


def test_all_problems_reported_in_line_order(tmp_path):
    path = write(tmp_path, "Journal=no\n[Coredump]\nnonsense\nJournal=perhaps\n")
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    assert [p.line for p in caught.value.problems] == [1, 3, 4]
    assert "outside any section" in str(caught.value)
    assert "not KEY=VALUE or [Section]: 'nonsense'" in str(caught.value)


def test_handler_reading_keeps_defaults_for_bad_values_only(tmp_path):
    path = write(tmp_path, "[Coredump]\nDirectory=/srv/c\nRateLimitBurst=abc\nStorage=floppy\n"
                           "garbage\nJournal=no\n")
    config = load_config(path, strict=False)
    assert config.directory == "/srv/c" and config.journal is False  # the good values stand
    assert config.rate_limit_burst == Config().rate_limit_burst == 10
    assert config.storage == "external"
    assert config.errors == (
        (f"{path} line 3: RateLimitBurst=abc: invalid number 'abc' (expected a whole number,"
        " e.g. 10); the default RateLimitBurst=10 is used"),
        (f"{path} line 4: Storage=floppy: invalid storage 'floppy' (expected external or none);"
        " the default Storage=external is used"),
        f"{path} line 5: not KEY=VALUE or [Section]: 'garbage'; ignored")


def test_a_bad_value_after_a_good_one_does_not_keep_the_good_one(tmp_path):
    """The last line of a key counts; when it cannot be read, the default does (not an
    earlier line the user meant to replace)."""
    config = load_config(write(tmp_path, "[Coredump]\nRateLimitBurst=3\nRateLimitBurst=x\n"),
                         strict=False)
    assert config.rate_limit_burst == 10


def test_unknown_keys_sections_and_repeats_warn(tmp_path):
    path = write(tmp_path, "[Coredump]\nFrobnicate=1\nMaxUse=1G\nMaxUse=2G\n[Later]\nX=1\n")
    config = load_config(path)
    assert config.max_use == 2 << 30
    assert config.warnings == (f"{path} line 2: unknown key 'Frobnicate' in [Coredump] ignored",
                               f"{path} line 4: MaxUse repeats line 3; the last one counts",
                               f"{path} line 6: unknown key 'X' in [Later] ignored")


def test_unreadable_file_is_an_error_in_both_modes(tmp_path):
    path = tmp_path / "c.conf"
    path.write_bytes(b"[Coredump]\nDirectory=/\xff\n")
    for strict in (True, False):
        with pytest.raises(ConfigFileError, match="cannot read configuration file"):
            load_config(str(path), strict=strict)
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_config(str(tmp_path / "missing.conf"))


def test_keys_table_matches_the_documented_keys():
    assert "RateLimitBurst" in config_keys() and "Directory" in config_keys()
    assert config_keys("NoSuchSection") == ()
