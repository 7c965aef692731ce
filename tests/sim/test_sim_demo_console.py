"""The demo's console: CityOS warnings one line each, library messages and tracebacks in the named log file."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityos.sim.demo import configure_logging, database_size


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def test_console_shows_cityos_warnings_only_and_names_the_log(tmp_path: Path, restore_logging: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    log_path = tmp_path / "data" / "demo.log"
    configure_logging(log_path)
    logging.getLogger("amqtt.mqtt.protocol.handler").warning("Timeout waiting for PUBACK for packet ID 7")
    logging.getLogger("aiomqtt").warning("There are 11 pending publish calls.")
    logging.getLogger("cityos.sim").info("provisioning")  # info: the file only
    try:
        raise RuntimeError("broker hiccup")
    except RuntimeError:
        logging.getLogger("cityos.iot.health").exception("device health round failed")
    logging.getLogger("cityos.sim").warning("MQTT connection sim-gateway-1: reset; reconnecting")
    for handler in logging.getLogger().handlers:
        handler.flush()
    console = capsys.readouterr().err.splitlines()
    assert console == [f"ERROR cityos.iot.health: device health round failed (details in {log_path})",
                       "WARNING cityos.sim: MQTT connection sim-gateway-1: reset; reconnecting"]
    written = log_path.read_text(encoding="utf-8")
    for text in ("Timeout waiting for PUBACK", "pending publish calls", "provisioning", "Traceback",
                 "RuntimeError: broker hiccup"):
        assert text in written


def test_database_size(tmp_path: Path) -> None:
    db = tmp_path / "cityos-demo.db"
    assert database_size(f"sqlite:///{db}") == "0 B"
    db.write_bytes(b"x" * 1500)
    (tmp_path / "cityos-demo.db-wal").write_bytes(b"x" * 1000)
    assert database_size(f"sqlite:///{db}") == "2.5 kB"
    assert database_size("postgresql://postgres@127.0.0.1/cityos") == ""
