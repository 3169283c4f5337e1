"""Settings: environment, plain names, .env, YAML, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiguardian.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_are_embedded_mode() -> None:
    settings = load_settings()
    assert settings.is_sqlite
    assert settings.effective_database_url.endswith("aiguardian-data/aiguardian.db")
    assert settings.redis_url is None
    assert settings.port == 8080


def test_prefixed_and_plain_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/1")
    monkeypatch.setenv("API_PORT", "9001")
    monkeypatch.setenv("CIRCUIT_BREAKER_THRESHOLD", "7")
    monkeypatch.setenv("CACHE_TTL", "60")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert not settings.is_sqlite
    assert settings.redis_url == "redis://localhost:6379/1"
    assert (settings.port, settings.circuit_breaker_threshold, settings.cache_ttl) == (9001, 7, 60)
    monkeypatch.setenv("AIG_PORT", "9002")
    assert load_settings().port == 9002


def test_dotenv_and_yaml_with_env_winning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "aiguardian.yaml"
    config.write_text("port: 7000\ncache_ttl: 11\ncors_origins: [https://a.example]\n")
    (tmp_path / ".env").write_text("AIG_CACHE_TTL=22\n")
    settings = load_settings(config)
    assert settings.port == 7000
    assert settings.cache_ttl == 22
    assert settings.cors_origins == ["https://a.example"]
    monkeypatch.setenv("AIG_PORT", "7001")
    assert load_settings(config).port == 7001


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIG_CORS_ORIGINS", "https://a.example, https://b.example")
    assert load_settings().cors_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("AIG_PORT", "abc", "AIG_PORT"),
        ("AIG_PORT", "70000", "AIG_PORT"),
        ("DATABASE_URL", "mysql://x", "AIG_DATABASE_URL"),
        ("REDIS_URL", "http://x", "AIG_REDIS_URL"),
        ("AIG_LOG_LEVEL", "LOUD", "AIG_LOG_LEVEL"),
        ("CIRCUIT_BREAKER_THRESHOLD", "0", "AIG_CIRCUIT_BREAKER_THRESHOLD"),
    ],
)
def test_invalid_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid setting {named}")


def test_secret_values_are_not_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("secret_key: [not, a, string]\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert "not" not in str(caught.value).split(":", 1)[1]


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
