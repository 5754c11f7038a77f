"""The configuration layer: layering, sources, queue inheritance and error messages (SPEC §9)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploinkyd.config import (
    Config,
    LoadedConfig,
    QueueSettings,
    default_runtime_dir,
    default_state_dir,
    load_config,
    parse_duration,
    validate_file,
)
from ploinkyd.errors import ConfigError, NotFoundError

DOC_FILE = Path(__file__).resolve().parent.parent / "config" / "ploinkyd.toml"


@dataclass
class Layers:
    """Real layer files on disk for one test: /etc, ~ and ./ stand-ins."""

    root: Path
    system: Path
    home: Path
    cwd: Path

    @property
    def home_file(self) -> Path:
        return self.home / ".ploinky" / "config.toml"

    @property
    def cwd_file(self) -> Path:
        return self.cwd / ".ploinky" / "config.toml"

    def write(self, path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def load(self, *, env: dict[str, str] | None = None, **kwargs: Any) -> LoadedConfig:
        return load_config(
            env=env or {}, cwd=self.cwd, home=self.home, system_file=self.system, **kwargs
        )


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    (tmp_path / "home").mkdir()
    (tmp_path / "work").mkdir()
    return Layers(tmp_path, tmp_path / "etc" / "config.toml", tmp_path / "home", tmp_path / "work")


def error_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    problems = excinfo.value.details["errors"]
    assert len(problems) == 1, problems
    return problems[0]


# --- defaults and the documented default file ------------------------------------------------


def test_no_files_gives_built_in_defaults_all_sourced_default(layers: Layers) -> None:
    loaded = layers.load()
    assert loaded.config == Config()
    assert loaded.files == []
    effective = loaded.config.queue_settings("default").model_dump()
    assert effective == QueueSettings().model_dump() | {"path": None}
    assert set(loaded.sources.values()) == {"default"}
    for key in ("daemon.node_id", "queues.default.concurrency", "queues.default.path"):
        assert loaded.sources[key] == "default"
    json.dumps(loaded.show())  # JSON-able as promised


def leaf_keys(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict) and value:
        return {k for key, item in value.items() for k in leaf_keys(item, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


def test_documented_default_file_equals_built_in_defaults(layers: Layers) -> None:
    validate_file(DOC_FILE)
    documented = layers.load(config_file=DOC_FILE)
    built_in = layers.load()
    assert documented.config == built_in.config
    assert documented.show()["config"] == built_in.show()["config"]

    # Every key is documented: set to its default, or (when the default is computed) shown
    # commented out.
    text = DOC_FILE.read_text()
    written = leaf_keys(tomllib.loads(text)) - {"queues"}
    commented = {"daemon.node_id", "daemon.state_dir", "daemon.runtime_dir", "api.socket"}
    commented |= {"api.listen_tcp", "api.tls_cert", "api.tls_key"}
    for key in commented:
        assert re.search(rf"^# {key.split('.')[-1]} = ", text, re.M), key
    expected = {k for k in built_in.sources if not k.startswith("queues.")}
    assert written | commented == expected
    assert not written & commented


# --- layering ----------------------------------------------------------------------------------


def test_each_layer_overrides_the_one_before(layers: Layers) -> None:
    layers.write(layers.system, '[daemon]\nnode_id = "sys"\nlog_level = "debug"\n')
    layers.write(layers.home_file, '[daemon]\nnode_id = "home"\nlog_format = "json"\n')
    layers.write(layers.cwd_file, '[daemon]\nnode_id = "cwd"\ndev_mode = true\n')
    explicit = layers.write(layers.root / "x.toml", '[daemon]\nnode_id = "file"\n')

    def node(**kwargs: Any) -> tuple[str, str]:
        loaded = layers.load(**kwargs)
        return loaded.config.daemon.node_id, loaded.sources["daemon.node_id"]

    assert node() == ("cwd", str(layers.cwd_file))
    assert node(env={"PLOINKY_NODE_ID": "env"}) == ("env", "env PLOINKY_NODE_ID")
    both: dict[str, Any] = {"env": {"PLOINKY_NODE_ID": "env"}, "config_file": explicit}
    assert node(**both) == ("file", str(explicit))
    flags = {"daemon.node_id": ("flag", "flag --node-id")}
    assert node(**both, flags=flags) == ("flag", "flag --node-id")

    loaded = layers.load(**both, flags=flags)
    assert loaded.files == [layers.system, layers.home_file, layers.cwd_file, explicit]
    assert loaded.config.daemon.log_level == "debug"
    assert loaded.sources["daemon.log_level"] == str(layers.system)
    assert loaded.config.daemon.log_format == "json"
    assert loaded.sources["daemon.log_format"] == str(layers.home_file)
    assert loaded.config.daemon.dev_mode is True
    assert loaded.sources["daemon.dev_mode"] == str(layers.cwd_file)
    assert loaded.sources["daemon.drain_timeout_s"] == "default"


def test_objects_merge_and_arrays_replace(layers: Layers) -> None:
    layers.write(layers.system, '[plugins]\nallow = ["a", "b"]\ndisabled = ["x", "y"]\n')
    layers.write(layers.home_file, '[plugins]\nallow = ["c"]\n')
    loaded = layers.load()
    assert loaded.config.plugins.allow == ["c"]
    assert loaded.config.plugins.disabled == ["x", "y"]
    assert loaded.sources["plugins.allow"] == str(layers.home_file)
    assert loaded.sources["plugins.disabled"] == str(layers.system)


def test_home_equal_to_cwd_reads_the_file_once(layers: Layers) -> None:
    layers.write(layers.home_file, "[daemon]\ndev_mode = true\n")
    loaded = load_config(env={}, cwd=layers.home, home=layers.home, system_file=layers.system)
    assert loaded.files == [layers.home_file]


def test_json_config_file(layers: Layers) -> None:
    path = layers.root / "conf.json"
    path.write_text(json.dumps({"queues": {"fast": {"concurrency": 16, "retention": "2h"}}}))
    loaded = layers.load(config_file=path)
    assert loaded.config.queue_settings("fast").concurrency == 16
    assert loaded.config.queue_settings("fast").retention == 7200
    assert loaded.sources["queues.fast.concurrency"] == str(path)


def test_flags_win_and_none_values_are_skipped(layers: Layers) -> None:
    path = layers.write(layers.root / "x.toml", "[api]\nlisten_tcp = '127.0.0.1:1000'\n")
    flags: dict[str, tuple[Any, str]] = {
        "api.listen_tcp": ("[::1]:2000", "flag --listen"),
        "daemon.state_dir": (None, "flag --state-dir"),
    }
    loaded = layers.load(env={"PLOINKY_API_TCP": "0.0.0.0:3000"}, config_file=path, flags=flags)
    assert loaded.config.api.tcp_address() == ("::1", 2000)
    assert loaded.sources["api.listen_tcp"] == "flag --listen"
    assert loaded.sources["daemon.state_dir"] == "default"


# --- environment -------------------------------------------------------------------------------


def test_env_generic_and_shortcuts(layers: Layers) -> None:
    env = {
        "PLOINKY_QUEUE_DEFAULTS__CONCURRENCY": "8",
        "PLOINKY_QUEUES__DEFAULT__CONCURRENCY": "2",
        "PLOINKY_QUEUES__BULK__RETENTION": "1w",
        "PLOINKY_PLUGINS__ALLOW": '["https://example.org/*"]',
        "PLOINKY_DAEMON__DEV_MODE": "true",
        "PLOINKY_DAEMON__NODE_ID": "42",
        "PLOINKY_STATE_DIR": "/srv/state",
        "PLOINKY_RUNTIME_DIR": "/srv/run",
        "PLOINKY_LOG_LEVEL": "DEBUG",
        "PLOINKY_LOG_FORMAT": "json",
        "PLOINKY_API_TCP": "localhost:8470",
        # Not config: read elsewhere, and must not be reported as unknown keys.
        "PLOINKY_CONFIG": "/nonexistent.toml",
        "PLOINKY_PASSWORD": "secret",
        "PLOINKY_REPOSITORY": "/backups",
        "PLOINKY_DAEMON__RESCAN_INTERVAL_S": "",  # empty means unset
        "HOME": "/elsewhere",
    }
    loaded = layers.load(env=env)
    config = loaded.config
    assert config.queue_defaults.concurrency == 8
    assert config.queue_settings("default").concurrency == 2
    assert config.queue_settings("bulk").concurrency == 8
    assert config.queue_settings("bulk").retention == 7 * 86400
    assert config.plugins.allow == ["https://example.org/*"]
    assert config.daemon.dev_mode is True
    assert config.daemon.node_id == "42"
    assert config.daemon.state_dir == Path("/srv/state")
    assert config.resolved_runtime_dir() == Path("/srv/run")
    assert config.resolved_socket() == Path("/srv/run/control.sock")
    assert (config.daemon.log_level, config.daemon.log_format) == ("debug", "json")
    assert config.api.tcp_address() == ("localhost", 8470)
    assert config.daemon.rescan_interval_s == 5.0
    assert (
        loaded.sources["queues.default.concurrency"] == "env PLOINKY_QUEUES__DEFAULT__CONCURRENCY"
    )
    assert loaded.sources["queues.bulk.concurrency"] == "env PLOINKY_QUEUE_DEFAULTS__CONCURRENCY"
    assert loaded.sources["daemon.state_dir"] == "env PLOINKY_STATE_DIR"
    assert loaded.files == []


def test_env_shortcut_wins_over_generic_spelling(layers: Layers) -> None:
    env = {"PLOINKY_DAEMON__NODE_ID": "generic", "PLOINKY_NODE_ID": "shortcut"}
    assert layers.load(env=env).config.daemon.node_id == "shortcut"


def test_unknown_env_variable_is_an_error_naming_it(layers: Layers) -> None:
    with pytest.raises(ConfigError) as excinfo:
        layers.load(env={"PLOINKY_STATEDIR": "/x"})
    assert error_of(excinfo)["source"] == "env PLOINKY_STATEDIR"
    assert "unknown key 'statedir'" in str(excinfo.value)


def test_env_error_is_attributed_to_the_variable(layers: Layers) -> None:
    layers.write(layers.system, "[queue_defaults]\nconcurrency = 2\n")
    with pytest.raises(ConfigError) as excinfo:
        layers.load(env={"PLOINKY_QUEUE_DEFAULTS__CONCURRENCY": "0"})
    assert error_of(excinfo) == {
        "source": "env PLOINKY_QUEUE_DEFAULTS__CONCURRENCY",
        "key": "queue_defaults.concurrency",
        "message": "must be an integer from 1 to 1024, got 0",
    }


# --- queues ------------------------------------------------------------------------------------


def test_queue_defaults_apply_to_every_queue_that_does_not_set_its_own(layers: Layers) -> None:
    layers.write(
        layers.system,
        "[queue_defaults]\nconcurrency = 8\nwatch = 'polling'\n"
        "[queues.fast]\nconcurrency = 2\n"
        # Restating the built-in default still overrides [queue_defaults].
        "[queues.exact]\nconcurrency = 4\n"
        "[queues.bare]\n",
    )
    layers.write(layers.home_file, "[queues.fast]\nretention = '1h'\n")
    loaded = layers.load()
    config = loaded.config
    assert list(config.queues) == ["default", "fast", "exact", "bare"]
    assert config.queue_settings("default").concurrency == 8
    assert config.queue_settings("bare").concurrency == 8
    assert config.queue_settings("exact").concurrency == 4
    fast = config.queue_settings("fast")
    assert (fast.concurrency, fast.retention, fast.watch) == (2, 3600, "polling")
    assert loaded.sources["queues.fast.concurrency"] == str(layers.system)
    assert loaded.sources["queues.fast.retention"] == str(layers.home_file)
    assert loaded.sources["queues.fast.watch"] == str(layers.system)
    assert loaded.sources["queues.bare.lock_timeout"] == "default"
    assert loaded.show()["config"]["queues"]["bare"]["concurrency"] == 8


def test_queue_path(layers: Layers, tmp_path: Path) -> None:
    layers.write(layers.system, f"[queues.ext]\npath = '{tmp_path / 'q'}'\n")
    config = layers.load().config
    assert config.queue_path("ext", Path("/state")) == tmp_path / "q"
    assert config.queue_path("default", Path("/state")) == Path("/state/queues/default")
    with pytest.raises(NotFoundError):
        config.queue_path("missing", Path("/state"))


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("90", 90.0), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0),
     ("7d", 604800.0), ("1w", 604800.0), (" 1.5 H ", 5400.0), ("0", 0.0)],
)  # fmt: skip
def test_durations(given: object, seconds: float) -> None:
    assert parse_duration(given) == seconds
    assert QueueSettings.model_validate({"retention": given}).retention == seconds


@pytest.mark.parametrize("bad", [-1, "-5s", "5y", "soon", "", True, None, [1], float("inf")])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_api_socket_mode_and_tcp(layers: Layers) -> None:
    layers.write(layers.system, "[api]\nsocket_mode = '600'\nlisten_tcp = '[::1]:80'\n")
    api = layers.load().config.api
    assert (api.socket_mode, api.socket_mode_bits) == ("0600", 0o600)
    assert api.tcp_address() == ("::1", 80)


def test_default_dirs_follow_spec() -> None:
    user = {"HOME": "/home/u", "XDG_STATE_HOME": "/xs", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_state_dir(user, euid=1000) == Path("/xs/ploinkyd")
    assert default_runtime_dir(user, euid=1000) == Path("/run/user/1000/ploinkyd")
    bare = {"HOME": "/home/u", "XDG_STATE_HOME": "relative/is/ignored"}
    assert default_state_dir(bare, euid=1000) == Path("/home/u/.local/state/ploinkyd")
    assert default_runtime_dir(bare, euid=1000) == Path("/tmp/ploinkyd-1000")
    for env, euid in (
        (user, 0),
        ({**user, "INVOCATION_ID": "x"}, 1000),
        ({"NOTIFY_SOCKET": "@n"}, 5),
    ):
        assert default_state_dir(env, euid=euid) == Path("/var/lib/ploinkyd")
        assert default_runtime_dir(env, euid=euid) == Path("/run/ploinkyd")
    unit = {"INVOCATION_ID": "x", "STATE_DIRECTORY": "/s/a:/s/b", "RUNTIME_DIRECTORY": "/r"}
    assert default_state_dir(unit, euid=1000) == Path("/s/a")
    assert default_runtime_dir(unit, euid=1000) == Path("/r")
    explicit = Config.model_validate({"daemon": {"state_dir": "/x"}, "api": {"socket": "/s"}})
    assert explicit.resolved_state_dir(user) == Path("/x")
    assert explicit.resolved_socket(user) == Path("/s")


# --- errors ------------------------------------------------------------------------------------

BAD_VALUES = [
    pytest.param(
        "[queues.fast]\nconcurency = 3\n",
        "queues.fast.concurency",
        "unknown key 'concurency' (allowed: concurrency, retention, watch,",
        id="unknown-key",
    ),
    pytest.param(
        "[tilez]\nx = 1\n", "tilez", "unknown key 'tilez' (allowed: daemon,", id="unknown-section"
    ),
    pytest.param(
        "[queues.fast]\nconcurrency = 'lots'\n",
        "queues.fast.concurrency",
        "must be an integer from 1 to 1024, got 'lots'",
        id="wrong-type",
    ),
    pytest.param(
        "[daemon]\ndev_mode = 'maybe'\n",
        "daemon.dev_mode",
        "must be true or false, got 'maybe'",
        id="wrong-type-bool",
    ),
    pytest.param(
        "[queue_defaults]\ngroup_commit = 5000\n",
        "queue_defaults.group_commit",
        "must be an integer from 1 to 4096, got 5000",
        id="out-of-range",
    ),
    pytest.param(
        "[daemon]\ndrain_timeout_s = 0\n",
        "daemon.drain_timeout_s",
        "must be a number greater than 0, got 0",
        id="out-of-range-float",
    ),
    pytest.param(
        "[queues.default]\nwatch = 'fanotify'\n",
        "queues.default.watch",
        "must be one of auto, inotify, polling, got 'fanotify'",
        id="bad-enum",
    ),
    pytest.param(
        "[queue_defaults]\nretention = '3 fortnights'\n",
        "queue_defaults.retention",
        "must be a duration of at least 0 (seconds, or a string like '90s', '5m', '2h', '7d', "
        "'1w'), got '3 fortnights'",
        id="bad-duration",
    ),
    pytest.param(
        "[queue_defaults]\nretention = -5\n",
        "queue_defaults.retention",
        "must be a duration of at least 0",
        id="negative-duration",
    ),
    pytest.param(
        '[queues."bad name"]\nconcurrency = 1\n',
        "queues.bad name",
        "queue name 'bad name' is not allowed: it must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}",
        id="bad-queue-name",
    ),
    pytest.param("queues = 3\n", "queues", "must be a table, got 3", id="section-not-a-table"),
    pytest.param(
        "[api]\nsocket_mode = 0o660\n",
        "api.socket_mode",
        "must be an octal permission string such as '0660' or '0600', got 432",
        id="socket-mode-int",
    ),
    pytest.param(
        "[api]\nlisten_tcp = 'localhost'\n",
        "api.listen_tcp",
        "must be HOST:PORT with a port from 1 to 65535",
        id="listen-tcp",
    ),
    pytest.param(
        "[plugins]\nallow = ['https://*', 7]\n",
        "plugins.allow[1]",
        "must be a string, got 7",
        id="list-item",
    ),
]


@pytest.mark.parametrize(("text", "key", "message"), BAD_VALUES)
def test_errors_name_file_key_and_what_is_allowed(
    layers: Layers, text: str, key: str, message: str
) -> None:
    # A valid layer on top must not steal the blame from the file that set the bad key.
    path = layers.write(layers.home_file, text)
    layers.write(layers.cwd_file, "[daemon]\nrecovery_interval_s = 10\n")
    with pytest.raises(ConfigError) as excinfo:
        layers.load()
    problem = error_of(excinfo)
    assert (problem["source"], problem["key"]) == (str(path), key)
    assert problem["message"].startswith(message)
    assert str(excinfo.value).startswith(f"{path}: {key}: {message}")
    assert excinfo.value.exit_code == 78

    # The same file on its own fails the same way.
    with pytest.raises(ConfigError) as alone:
        validate_file(path)
    assert error_of(alone) == problem


def test_several_errors_are_all_reported(layers: Layers) -> None:
    path = layers.write(layers.system, "[daemon]\nlog_level = 'loud'\n[api]\nmax_body_bytes = 0\n")
    with pytest.raises(ConfigError) as excinfo:
        layers.load()
    keys = [(e["source"], e["key"]) for e in excinfo.value.details["errors"]]
    assert keys == [(str(path), "daemon.log_level"), (str(path), "api.max_body_bytes")]
    assert "must be one of debug, info, warning, error, got 'loud'" in str(excinfo.value)
    assert "must be an integer of at least 1, got 0" in str(excinfo.value)


def test_unknown_key_suggests_the_close_one(layers: Layers) -> None:
    layers.write(layers.system, "[queue_defaults]\nconcurency = 3\n")
    with pytest.raises(ConfigError, match="did you mean 'concurrency'"):
        layers.load()


def test_toml_syntax_error_names_file_and_line(layers: Layers) -> None:
    path = layers.write(layers.cwd_file, "[daemon]\nlog_level = 'info'\nnode_id = \n")
    with pytest.raises(ConfigError) as excinfo:
        layers.load()
    assert str(excinfo.value).startswith(f"{path}: line 3, column 11: TOML syntax error")
    assert error_of(excinfo)["source"] == str(path)


def test_json_syntax_error_names_file_and_line(layers: Layers) -> None:
    path = layers.write(layers.root / "c.json", '{\n  "daemon": {\n    "dev_mode": tru\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: line 3, column \d+: "):
        layers.load(config_file=path)


def test_top_level_must_be_a_table(layers: Layers) -> None:
    path = layers.write(layers.root / "c.json", "[1, 2]")
    with pytest.raises(ConfigError, match="top level must be a table"):
        validate_file(path)


def test_missing_explicit_config_file_is_an_error(layers: Layers) -> None:
    missing = layers.root / "nope.toml"
    with pytest.raises(ConfigError) as excinfo:
        layers.load(config_file=missing)
    assert str(excinfo.value) == f"{missing}: config file not found"
    with pytest.raises(ConfigError, match="config file not found"):
        validate_file(missing)


def test_unreadable_layer_file_is_an_error(layers: Layers) -> None:
    layers.home_file.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(ConfigError, match=re.escape(str(layers.home_file))):
        layers.load()


# --- no input can crash the loader -------------------------------------------------------------

KEYS = st.sampled_from(
    ["daemon", "queue_defaults", "queues", "api", "plugins", "default", "fast", "bad name",
     "node_id", "state_dir", "socket", "socket_mode", "listen_tcp", "path", "concurrency",
     "retention", "lock_timeout", "watch", "allow", "disabled", "log_level", "group_commit"]
) | st.text(max_size=12)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["7d", "~nosuchuser/x", "0660", "[::1]:1", "-1s", "1e400", "auto"])
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.dictionaries(KEYS, JUNK, max_size=6))
def test_junk_config_loads_or_raises_config_error(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "junk.json"
    path.write_text(json.dumps(data))
    try:
        loaded = load_config(
            config_file=path, env={}, cwd=tmp_path, home=tmp_path, system_file=tmp_path / "none"
        )
    except ConfigError as exc:
        assert exc.details["errors"]
        assert all(e["source"] == str(path) for e in exc.details["errors"])
    else:
        json.dumps(loaded.show())
