import re
from pathlib import Path

import pytest

from gateway import eventloop
from gateway.settings import Settings, SettingsError, load_settings
from tests.test_yamlfile import alias_bomb


def test_defaults_without_config_or_env() -> None:
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.embedded_sim


def test_yaml_env_and_overrides_layer_in_order(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("port: 9000\ntimeouts:\n  idle_s: 7\nupstreams: [http://a:8000]\n")
    settings = load_settings(
        config, env={"GATEWAY_UPSTREAM": "http://b:8000,http://c:8000"},
        overrides={"port": 9100})
    assert settings.port == 9100
    assert settings.timeouts.idle_s == 7.0
    assert settings.timeouts.ttfb_s == Settings().timeouts.ttfb_s
    assert settings.upstreams == ("http://b:8000", "http://c:8000")
    assert not settings.embedded_sim


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text("log_level: DEBUG\n")
    assert load_settings(env={"GATEWAY_CONFIG": str(config)}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port: 80\ntimeouts:\n  idel_s: 3\n", "g.yaml:3: timeouts.idel_s: unknown key"),
        ("prot: 80\n", "g.yaml:1: prot: unknown key"),
        ("port: eighty\n", "g.yaml:1: port: expected a whole number"),
        ("port: 80.5\n", "g.yaml:1: port: expected a whole number, got 80.5"),
        ("port: true\n", "g.yaml:1: port: expected a whole number, got True"),
        ("port: 65536\n", "g.yaml:1: port: must be between 1 and 65535"),
        ("log_format: xml\n", "g.yaml:1: log_format: one of json, text"),
        ("redis_url: localhost:6379\n", "g.yaml:1: redis_url: expected a redis://"),
        ("upstreams: 'http://a:1,,http://b:1'\n", "g.yaml:1: upstreams: empty entry"),
        ("upstreams: [ftp://x]\n", "g.yaml:1: upstreams.0: expected an http(s) URL"),
        ("health:\n  failures_to_eject: 0\n", "health.failures_to_eject: must be at least 1"),
        ("health:\n  failed_probes_to_down: 0\n",
         "health.failed_probes_to_down: must be at least 1"),
        # 0 probed without a pause: ~1,500 /health requests a second per backend.
        ("health:\n  interval_s: 0\n", "health.interval_s: must be at least 0.05"),
        ("health:\n  interval_s: 0.001\n", "health.interval_s: must be at least 0.05"),
        ("health:\n  probe_timeout_s: 0\n", "health.probe_timeout_s: must be positive"),
        ("upstreams: ['HTTP://A:1', http://a:1]\n",
         "upstreams.1: the same upstream as upstreams.0"),
        ("upstreams: [http://a:1, 'http://a:1/']\n",
         "upstreams.1: the same upstream as upstreams.0"),
        ("upstreams: [http://a:1/v1, http://b:1, http://a:1]\n",
         "upstreams.2: the same upstream as upstreams.0"),
        ("timeouts: 5\n", "g.yaml:1: timeouts: expected a mapping"),
        ("port: [1\n", "g.yaml:2: invalid YAML"),
        ("- 1\n", "expected a mapping of settings"),
        ("retries: -1\n", "retries: must not be negative"),
        ("port: 80\ntimeouts:\n  idle_s: 3\n  idle_s: 4\n",
         "g.yaml:4: timeouts.idle_s: duplicate key (first written on line 3)"),
        (alias_bomb(6), "g.yaml:5: aliases expand this document by"),
    ],
)
def test_bad_config_names_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(config, env={})
    assert expected in str(info.value).replace(str(tmp_path) + "/", "")


def test_bad_env_value_names_the_variable_and_key() -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_PORT: port: expected a whole number"):
        load_settings(env={"GATEWAY_PORT": "http"})


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        ('port: "abc"\n', {"port": 9000}, "g.yaml:1: port: expected a whole number"),
        ("port: 99999\n", {"port": 9000}, "g.yaml:1: port: must be between 1 and 65535"),
        ("port: -1\n", {"port": 9000}, "g.yaml:1: port: must not be negative"),
        ("port: true\n", {"port": 9000}, "g.yaml:1: port: expected a whole number"),
        ('upstreams: "notaurl"\n', {"upstreams": ["http://a:8000"]},
         "g.yaml:1: upstreams.0: expected an http(s) URL"),
        ("timeouts:\n  idle_s: x\n", {"timeouts": {"idle_s": 3}},
         "g.yaml:2: timeouts.idle_s: expected a number"),
    ],
)
def test_a_bad_file_value_stops_start_up_even_when_a_flag_overrides_it(
        tmp_path: Path, text: str, flags: dict[str, object], expected: str) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(config, env={}, overrides=flags)
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(expected)


def test_a_bad_env_value_stops_start_up_even_when_a_flag_overrides_it() -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_PORT: port: expected a whole number"):
        load_settings(env={"GATEWAY_PORT": "abc"}, overrides={"port": 9000})
    assert load_settings(env={"GATEWAY_PORT": "9001"}, overrides={"port": 9000}).port == 9000


def test_a_bad_flag_value_names_only_the_key(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text("port: 9000\n")
    with pytest.raises(SettingsError, match=r"^port: must be between 1 and 65535"):
        load_settings(config, env={"GATEWAY_PORT": "9001"}, overrides={"port": 70000})


@pytest.mark.parametrize("value", [",", ", ", " , ,", "http://a:8000,,http://b:8000",
                                   "http://a:8000,"])
def test_an_upstream_variable_with_an_empty_entry_is_refused(value: str) -> None:
    """Not the embedded simulator: a template that expanded to nothing must not look
    like a healthy gateway serving simulated text."""
    with pytest.raises(SettingsError, match=r"^GATEWAY_UPSTREAM: upstreams: empty entry"):
        load_settings(env={"GATEWAY_UPSTREAM": value})


def test_an_unset_or_empty_upstream_variable_means_the_embedded_simulator() -> None:
    assert load_settings(env={}).embedded_sim
    assert load_settings(env={"GATEWAY_UPSTREAM": ""}).embedded_sim


def test_log_format_from_the_environment_and_validated() -> None:
    assert load_settings(env={}).log_format == "json"
    assert load_settings(env={"GATEWAY_LOG_FORMAT": "text"}).log_format == "text"
    with pytest.raises(SettingsError, match=r"^GATEWAY_LOG_FORMAT: log_format: one of json, "
                                            r"text$"):
        load_settings(env={"GATEWAY_LOG_FORMAT": "xml"})


def test_event_loop_from_the_environment_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(env={}).event_loop == "auto"
    assert load_settings(env={"GATEWAY_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(SettingsError, match=r"^GATEWAY_EVENT_LOOP: event_loop: one of auto, "
                                            r"uvloop, asyncio, got 'trio'$"):
        load_settings(env={"GATEWAY_EVENT_LOOP": "trio"})
    monkeypatch.setattr(eventloop, "installed", lambda module: module != "uvloop")
    with pytest.raises(SettingsError, match=r"^event_loop: uvloop is not installed here"):
        load_settings(env={}, overrides={"event_loop": "uvloop"})
    assert load_settings(env={}).event_loop == "auto"  # auto: asyncio's loop, no error


@pytest.mark.parametrize("url", ["redis://cache:6379/0", "rediss://u@cache:6380",
                                 "unix:///run/redis.sock"])
def test_redis_url_accepts_what_the_client_accepts(url: str) -> None:
    assert load_settings(env={"GATEWAY_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", ["notaurl", "http://cache:6379", "cache:6379"])
def test_redis_url_is_validated_at_load(url: str) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_REDIS_URL: redis_url: expected a "
                                            r"redis://, rediss:// or unix:// URL"):
        load_settings(env={"GATEWAY_REDIS_URL": url})


def test_audit_url_from_the_environment_and_validated() -> None:
    url = "postgresql://gw@db:5432/audit"
    assert load_settings(env={"GATEWAY_AUDIT_URL": url}).audit.url == url
    with pytest.raises(SettingsError, match=r"audit\.url: expected a postgresql:// URL"):
        load_settings(env={"GATEWAY_AUDIT_URL": "mysql://db/audit"})


@pytest.mark.parametrize(("audit", "expected"), [
    ({"acknowledge": "never"}, r"audit\.acknowledge: one of committed, queued"),
    ({"acknowledge": "queued", "on_error": "fail_closed"},
     r"audit\.acknowledge: queued sends answers before their records are committed"),
])
def test_audit_acknowledge_is_validated(audit: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        load_settings(env={}, overrides={"audit": audit})
    assert load_settings(env={}).audit.acknowledge == "committed"
    assert load_settings(env={}, overrides={"audit": {"acknowledge": "queued"}}
                         ).audit.acknowledge == "queued"


def test_ledger_url_from_the_environment_and_validated() -> None:
    url = "postgresql://gw@db:5432/ledger"
    assert load_settings(env={"GATEWAY_LEDGER_URL": url}).watermark.ledger_url == url
    with pytest.raises(SettingsError, match=r"watermark\.ledger_url: expected a postgresql"):
        load_settings(env={"GATEWAY_LEDGER_URL": "sqlite:///x"})


@pytest.mark.parametrize(
    ("tracing", "expected"),
    [
        ({"otlp_endpoint": "collector:4318"}, "tracing.otlp_endpoint: expected an http(s) URL"),
        ({"otlp_endpoint": "http://"}, "tracing.otlp_endpoint: expected an http(s) URL"),
        ({"otlp_endpoint": "http://[::1"}, "tracing.otlp_endpoint: expected an http(s) URL"),
        ({"otlp_endpoint": "https://u:pw@c:4318"}, "tracing.otlp_endpoint: no credentials"),
        ({"otlp_endpoint": "http://c:4318", "service_name": " "},
         "tracing.service_name: must not be empty"),
        ({"otlp_endpoint": "http://c:4318", "timeout_s": 0}, "tracing.timeout_s: must be posi"),
        ({"otlp_endpoint": "http://c:4318", "sample": 1}, "tracing.sample: unknown key"),
    ],
)
def test_bad_tracing_settings_name_the_key(tracing: dict[str, object], expected: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(expected)):
        load_settings(env={}, overrides={"tracing": tracing})


def test_tracing_is_off_by_default_and_on_from_the_environment() -> None:
    assert load_settings(env={}).tracing.otlp_endpoint is None
    settings = load_settings(env={"GATEWAY_OTLP_ENDPOINT": "https://collector:4318"},
                             overrides={"tracing": {"service_name": "gw-eu"}})
    assert settings.tracing.otlp_endpoint == "https://collector:4318"
    assert settings.tracing.service_name == "gw-eu"
