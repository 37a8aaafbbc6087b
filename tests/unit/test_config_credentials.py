"""API key parsing (reference section 1.1), credential lookup order, TLS, ClientConfig."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import pytest

from fwfs import __version__
from fwfs.config import (
    ClientConfig,
    TrustConfig,
    load_api_key,
    parse_api_key,
    tls_verify_from_env,
)
from fwfs.errors import InvalidArgument, NotFound

SECRET = "Zq7-unit-test-secret-Wx9"
KEY57 = "k" * 57


@pytest.mark.parametrize(
    ("key", "base_url", "authorization"),
    [
        (f"site.io:{SECRET}", "https://site.io:443/api", f"scitran-user {SECRET}"),
        (f"site.io:8443:{SECRET}", "https://site.io:8443/api", f"scitran-user {SECRET}"),
        (
            f"127.0.0.1:8080:__force_insecure:{SECRET}",
            "http://127.0.0.1:8080/api",
            f"scitran-user {SECRET}",
        ),
        (f"site.io:{KEY57}", "https://site.io:443/api", f"Bearer {KEY57}"),
        # Only the last part is the secret; anything between port and secret is ignored.
        (f"site.io:8443:junk:{SECRET}", "https://site.io:8443/api", f"scitran-user {SECRET}"),
        (f"site.io:8443:{KEY57}", "https://site.io:8443/api", f"Bearer {KEY57}"),
    ],
)
def test_key_parsing_matches_the_sdk_table(key: str, base_url: str, authorization: str) -> None:
    assert parse_api_key(key) == (base_url, authorization)


def test_56_and_58_character_keys_stay_scitran_user() -> None:
    assert parse_api_key("h:" + "k" * 56)[1].startswith("scitran-user ")
    assert parse_api_key("h:" + "k" * 58)[1].startswith("scitran-user ")


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        # The two rows the SDK turns into nonsense URLs are refused with a useful hint.
        (f"site.io:__force_insecure:{SECRET}", "port"),
        (f"http://127.0.0.1:8080:{SECRET}", "scheme"),
        (SECRET, "host"),
        ("site.io:", "secret"),
        (f":{SECRET}", "host"),
        (f"site.io:99999:{SECRET}", "port"),
        (f"site.io:{SECRET} trailing", "secret"),
    ],
)
def test_bad_keys_are_refused_without_echoing_the_secret(key: str, hint: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_api_key(key)
    assert info.value.errno == errno.EINVAL
    assert hint in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_config_from_key_builds_base_url_and_header() -> None:
    cfg = ClientConfig.from_api_key(f"127.0.0.1:8080:__force_insecure:{SECRET}", read_timeout=5)
    assert cfg.base_url == "http://127.0.0.1:8080/api"
    assert cfg.authorization == f"scitran-user {SECRET}"
    assert cfg.read_timeout == 5
    assert cfg.user_agent == f"fwfs/{__version__}"


def test_config_derives_bearer_when_no_prefix_given() -> None:
    assert ClientConfig("https://h:443/api", KEY57).authorization == f"Bearer {KEY57}"


def test_config_never_shows_the_key() -> None:
    cfg = ClientConfig.from_api_key(f"site.io:{SECRET}")
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg)
    assert "api_key" not in repr(cfg)


def test_config_is_frozen() -> None:
    cfg = ClientConfig.from_api_key(f"site.io:{SECRET}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.read_timeout = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "overrides",
    [{"read_timeout": 0}, {"connect_timeout": -1}, {"retries": -1}, {"pool_size": 0}],
)
def test_config_rejects_nonsense_settings(overrides: dict[str, float]) -> None:
    with pytest.raises(InvalidArgument):
        ClientConfig.from_api_key(f"site.io:{SECRET}", **overrides)


def _write_user_json(home: Path, content: str) -> Path:
    path = home / ".config" / "flywheel" / "user.json"
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    return path


def test_cli_key_wins_over_everything(tmp_path: Path) -> None:
    _write_user_json(tmp_path, json.dumps({"key": "file:key1"}))
    env = {"FWFS_API_KEY": "env:key2"}
    assert load_api_key("cli:key3", env, tmp_path) == ("cli:key3", "--api-key")


def test_env_var_wins_over_user_json(tmp_path: Path) -> None:
    _write_user_json(tmp_path, json.dumps({"key": "file:key1"}))
    assert load_api_key(None, {"FWFS_API_KEY": "env:key2"}, tmp_path) == (
        "env:key2",
        "FWFS_API_KEY",
    )


def test_user_json_from_fw_login_is_the_fallback(tmp_path: Path) -> None:
    path = _write_user_json(tmp_path, json.dumps({"key": "file:key1", "root": False}))
    assert load_api_key(None, {"FWFS_API_KEY": ""}, tmp_path) == ("file:key1", str(path))


def test_flywheel_user_home_is_where_fw_login_wrote(tmp_path: Path) -> None:
    other = tmp_path / "other"
    path = _write_user_json(other, json.dumps({"key": "file:key9"}))
    env = {"FLYWHEEL_USER_HOME": str(other)}
    assert load_api_key(None, env, tmp_path / "home") == ("file:key9", str(path))


def test_no_key_anywhere_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        load_api_key(None, {}, tmp_path)
    message = str(info.value)
    assert "--api-key" in message and "FWFS_API_KEY" in message and "fw login" in message


def test_empty_cli_key_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    _write_user_json(tmp_path, json.dumps({"key": "file:key1"}))
    with pytest.raises(InvalidArgument):
        load_api_key("  ", {}, tmp_path)


@pytest.mark.parametrize("content", [f'{{"key": "{SECRET}"', json.dumps({"root": True}), "[]"])
def test_broken_user_json_is_reported_without_its_content(tmp_path: Path, content: str) -> None:
    path = _write_user_json(tmp_path, content)
    with pytest.raises(InvalidArgument) as info:
        load_api_key(None, {}, tmp_path)
    assert str(path) in str(info.value)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None


def test_tls_uses_fw_ssl_cert_file_alone_when_set(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    env = {"FW_SSL_CERT_FILE": str(bundle), "REQUESTS_CA_BUNDLE": "/nowhere", "SSL_CERT_FILE": "x"}
    trust = tls_verify_from_env(env)
    assert trust == TrustConfig(ca_file=str(bundle), ca_file_source="FW_SSL_CERT_FILE")
    assert trust.describe() == f"only the CA bundle {bundle} named by FW_SSL_CERT_FILE"


def test_tls_uses_requests_ca_bundle_alone_when_set(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    assert tls_verify_from_env({"REQUESTS_CA_BUNDLE": str(bundle)}) == TrustConfig(
        ca_file=str(bundle), ca_file_source="REQUESTS_CA_BUNDLE"
    )


def test_tls_defaults_to_the_os_store_and_certifi() -> None:
    trust = tls_verify_from_env({})
    assert trust == TrustConfig(use_os_store=True, use_certifi=True)
    assert trust.describe() == "the OS trust store and certifi's bundle"
    moved = tls_verify_from_env({"SSL_CERT_FILE": "/etc/corp.pem", "SSL_CERT_DIR": ""})
    assert moved.os_ca_file == "/etc/corp.pem" and moved.os_ca_dir is None
    assert "/etc/corp.pem" in moved.describe()


def test_client_config_verify_forms() -> None:
    base = "https://h:443/api"
    assert ClientConfig(base, SECRET).trust == TrustConfig()
    assert ClientConfig(base, SECRET, verify="/ca.pem").trust == TrustConfig(ca_file="/ca.pem")
    assert ClientConfig(base, SECRET, verify=False).trust is None


def test_tls_missing_cert_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="FW_SSL_CERT_FILE"):
        tls_verify_from_env({"FW_SSL_CERT_FILE": str(tmp_path / "missing.pem")})
