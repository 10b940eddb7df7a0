"""The [Fleet] section: read by load_config, documented in coredumpd.conf(5) and FLEET.md."""

from __future__ import annotations

import pathlib

from coredumpd.cli.coredumpd_spec import FLEET_KEYS
from coredumpd.config import fleet_keys, load_config

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_fleet_section_is_read(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("[Coredump]\nDirectory=/tmp/x\n[Fleet]\n"
                    "Database=postgresql://coredumpd@db.example:5432/crashes  # the URI\n"
                    "Host=web-1\nPort=5\n")
    config = load_config(str(path))
    assert config.fleet_database == "postgresql://coredumpd@db.example:5432/crashes"
    assert config.fleet_host == "web-1"
    assert config.warnings == (f"{path} line 6: unknown key 'Port' in [Fleet] ignored",)
    path.write_text("[Fleet]\nDatabase=\nHost=\n")
    config = load_config(str(path))
    assert (config.fleet_database, config.fleet_host) == ("", "")  # off; this host's name


def test_fleet_keys_are_documented() -> None:
    assert sorted(key.rstrip("=") for key, _text in FLEET_KEYS) == sorted(fleet_keys())
    page = (REPO / "man" / "coredumpd.conf.5").read_text()
    for key in fleet_keys():
        assert f"{key}=" in page
    fleet = (REPO / "docs" / "FLEET.md").read_text()
    for heading in ("## Access", "## Beyond one database server", "## Measured"):
        assert heading in fleet
