"""NATS MQTT user generation: refused settings (no server needed)."""

from __future__ import annotations

import pytest

from cityos.iot.nats_mqtt import NatsMqttSettings, main, nats_password_hash


def test_no_users_file_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CITYOS_NATS_MQTT_USERS_FILE", raising=False)
    assert NatsMqttSettings.from_env() is None


@pytest.mark.parametrize("user, hashed", [(None, None), ("cityos", None), ("cityos", "plain-password"),
                                          (None, "$2a$04$abcdefghijklmnopqrstuu")])
def test_a_users_file_without_a_bcrypt_service_user_is_refused(monkeypatch: pytest.MonkeyPatch, user: str | None,
                                                                hashed: str | None) -> None:
    """Writing device users only would lock CityOS's own processes out of NATS: refused at start."""
    monkeypatch.setenv("CITYOS_NATS_MQTT_USERS_FILE", "/tmp/cityos-users.conf")
    for name, value in (("CITYOS_NATS_MQTT_SERVICE_USER", user), ("CITYOS_NATS_MQTT_SERVICE_HASH", hashed)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        NatsMqttSettings.from_env()


def test_settings_from_env_and_the_hash_nats_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = nats_password_hash("s3cret")
    assert hashed.startswith("$2a$04$") and len(hashed) == 60  # the column is String(60)
    monkeypatch.setenv("CITYOS_NATS_MQTT_USERS_FILE", "/etc/nats/cityos-users.conf")
    monkeypatch.setenv("CITYOS_NATS_MQTT_SERVICE_USER", "cityos")
    monkeypatch.setenv("CITYOS_NATS_MQTT_SERVICE_HASH", hashed)
    monkeypatch.setenv("CITYOS_NATS_PID_FILE", "/run/nats/nats.pid")
    settings = NatsMqttSettings.from_env()
    assert settings is not None and str(settings.pid_file) == "/run/nats/nats.pid"
    assert settings.service_hash == hashed and not settings.dotted_topics


def test_the_hash_command_wants_its_one_word(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nats_mqtt"]) == 2 and main(["nats_mqtt", "hash", "extra"]) == 2
    assert "usage" in capsys.readouterr().err
