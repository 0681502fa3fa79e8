"""[[plugins]] from the configuration file: loaded in order by module path or registered name,
built with their options, refused by check-config and serve when they cannot be built."""

from __future__ import annotations

import smtplib
import textwrap
from pathlib import Path

import pytest

from smtpfront.assembly import build_hooks, plugin_specs
from smtpfront.config import ConfigError, PluginConfig, load_config, render
from smtpfront.policy.registry import BUILTINS, PluginError, build, resolve

from .support import TIMEOUT, Served, run_cli

PLUGIN = '''
from smtpfront.core.replies import Reply
from smtpfront.hooks import Hooks


class Refuse(Hooks):
    """Refuse RCPT to one local part with the configured text."""

    def __init__(self, local_part, text, code=550):
        self.local_part, self.text, self.code = local_part, text, code

    async def on_rcpt_to(self, session, address, params):
        if address.local_part == self.local_part:
            return Reply(self.code, "5.7.1", self.text)
        return None


def broken(**options):
    raise ValueError("this plugin is broken on purpose")


def not_hooks(**options):
    return object()
'''


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module ``testplugins`` and a distribution registering ``refuser`` under smtpfront.plugins."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "testplugins.py").write_text(PLUGIN)
    dist = site / "testplugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: testplugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[smtpfront.plugins]\nrefuser = testplugins:Refuse\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_plugins_are_read_in_order_with_their_options(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '''
        [[plugins]]
        use = "a.b:C"
        options = { x = 1, names = ["n"], nested = { k = "v" } }
        [[plugins]]
        use = "relay-policy"
    '''), env={})
    assert config.plugins == (PluginConfig("a.b:C", {"x": 1, "names": ["n"], "nested": {"k": "v"}}),
                              PluginConfig("relay-policy", {}))
    again = load_config(write(tmp_path, render(config, mask_secrets=False)), env={})
    assert again.plugins == config.plugins


@pytest.mark.parametrize(("text", "key"), [
    ('plugins = "a.b:C"', "plugins"),
    ('[[plugins]]\noptions = {}', "plugins[0].use"),
    ('[[plugins]]\nuse = "a b"', "plugins[0].use"),
    ('[[plugins]]\nuse = "a:B"\noptions = 3', "plugins[0].options"),
    ('[[plugins]]\nuse = "a:B"\nopts = {}', "plugins[0].opts"),
])
def test_bad_plugin_tables_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert info.value.key == key


def test_secret_options_are_masked_when_shown() -> None:
    shown = render(load_config(None, env={}).__class__(plugins=(PluginConfig("a:B", {"password": "hunter2"}),)))
    assert "hunter2" not in shown and '"***"' in shown


def test_names_resolve_by_entry_point_and_builtin(plugin_path: Path) -> None:
    assert resolve("p", "refuser").__name__ == "Refuse"
    for name, target in BUILTINS.items():
        assert resolve("p", name).__name__ == target.rpartition(":")[2]
    with pytest.raises(PluginError, match=r"neither package\.module:Factory nor a registered plugin.*refuser"):
        resolve("plugins[3]", "nosuch")


@pytest.mark.parametrize(("use", "options", "message"), [
    ("nosuchmodule:X", {}, "cannot import nosuchmodule"),
    ("testplugins:Nope", {}, "testplugins has no Nope"),
    ("testplugins:Refuse", {"unknown": 1}, "cannot be built: TypeError"),
    ("testplugins:broken", {}, "broken on purpose"),
    ("testplugins:not_hooks", {}, "not a smtpfront.hooks.Hooks"),
])
def test_a_plugin_that_cannot_be_built_is_named(plugin_path: Path, use: str, options: dict[str, object],
                                                message: str) -> None:
    with pytest.raises(PluginError, match=message) as info:
        build("plugins[1]", use, options)
    assert info.value.key == "plugins[1]"


def test_builtins_come_first_then_plugins_in_order(tmp_path: Path, plugin_path: Path) -> None:
    (tmp_path / "passwd").write_text("u:{PLAIN}p\n")
    config = load_config(write(tmp_path, f'''
        [auth]
        backend = "file"
        file = "{tmp_path / 'passwd'}"
        [policy]
        domains = ["example.com"]
        [[plugins]]
        use = "refuser"
        options = {{ local_part = "a", text = "first" }}
        [[plugins]]
        use = "testplugins:Refuse"
        options = {{ local_part = "a", text = "second" }}
    '''), env={})
    assert [spec.use for _, spec in plugin_specs(config)] == ["auth-file", "relay-policy", "refuser",
                                                              "testplugins:Refuse"]
    assert [type(p).__name__ for p in build_hooks(config).plugins] == ["FileAuth", "RelayPolicy", "Refuse", "Refuse"]


def test_check_config_names_the_plugin_it_cannot_build(tmp_path: Path, plugin_path: Path) -> None:
    path = write(tmp_path, '''
        [[plugins]]
        use = "testplugins:Refuse"
        options = { local_part = "a", text = "t" }
        [[plugins]]
        use = "nosuchmodule:Factory"
    ''')
    result = run_cli("check-config", path)
    assert result.returncode == 2, result
    assert "plugins[1]" in result.stderr and "nosuchmodule" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_to_start_with_a_broken_plugin(tmp_path: Path, plugin_path: Path, served: type[Served]) -> None:
    server = served('''
        queue = "maildir:{spool}"
        [[listeners]]
        address = "127.0.0.1:{port}"
        tls = "none"
        [[plugins]]
        use = "testplugins:broken"
    ''', wait=False)
    assert server.exited() != 0
    log = server.log.read_text()
    assert "plugins[0]" in log and "broken on purpose" in log and "Traceback" not in log


def test_plugins_decide_on_the_wire_in_order(plugin_path: Path, served: type[Served]) -> None:
    server = served('''
        queue = "maildir:{spool}"
        [[listeners]]
        address = "127.0.0.1:{port}"
        tls = "none"
        [[plugins]]
        use = "refuser"
        options = { local_part = "blocked", text = "refused by the first plugin" }
        [[plugins]]
        use = "testplugins:Refuse"
        options = { local_part = "blocked", text = "never asked" }
        [[plugins]]
        use = "testplugins:Refuse"
        options = { local_part = "other", text = "refused by the third plugin", code = 551 }
    ''')
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.mail("a@example.org")
        assert smtp.rcpt("blocked@example.net") == (550, b"5.7.1 refused by the first plugin")
        assert smtp.rcpt("other@example.net") == (551, b"5.7.1 refused by the third plugin")
        assert smtp.rcpt("fine@example.net")[0] == 250
        assert smtp.data(b"Subject: t\r\n\r\nx\r\n")[0] == 250
    assert len(server.queued()) == 1

