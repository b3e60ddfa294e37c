"""What dialguard's embedded server is given, by the machine's memory."""

from __future__ import annotations

from pathlib import Path

from dialguard.store.embedded import SETTINGS_FILE, server_settings, write_settings

GIB = 1024**3


def test_shared_buffers_are_an_eighth_of_memory_between_128mb_and_1gb() -> None:
    assert server_settings(GIB // 2)["shared_buffers"] == "128MB"
    assert server_settings(2 * GIB)["shared_buffers"] == "256MB"
    assert server_settings(4 * GIB)["shared_buffers"] == "512MB"
    assert server_settings(24 * GIB)["shared_buffers"] == "1024MB"


def test_settings_are_written_once_and_included_once(tmp_path: Path) -> None:
    (tmp_path / "postgresql.conf").write_text("max_connections = 100")  # no final newline
    write_settings(tmp_path, 4 * GIB)
    written = (tmp_path / SETTINGS_FILE).read_text()
    assert "shared_buffers = '512MB'\n" in written
    assert "checkpoint_timeout = '15min'\n" in written

    (tmp_path / SETTINGS_FILE).write_text("shared_buffers = '300MB'\n")  # an operator's edit
    write_settings(tmp_path, 24 * GIB)
    assert (tmp_path / SETTINGS_FILE).read_text() == "shared_buffers = '300MB'\n"
    assert (tmp_path / "postgresql.conf").read_text() == (
        f"max_connections = 100\ninclude_if_exists = '{SETTINGS_FILE}'\n"
    )
