"""Plugins by name: ``[[plugins]] use = …`` becomes a :class:`~smtpfront.hooks.Hooks` object.

``use`` is either ``"package.module:Factory"`` (any callable returning a ``Hooks``: usually the
class itself) or a name registered under the entry-point group ``smtpfront.plugins`` (the
built-ins ``auth-file``, ``auth-dovecot``, ``relay-policy`` and ``client-limits`` are registered there, and known
here too, so a checkout that was not reinstalled still finds them). ``options`` are passed as
keyword arguments. Every failure is a :class:`PluginError` naming the plugin: ``check-config``
exits 2 with it and ``serve`` refuses to start.

A factory is called by ``check-config``, by ``serve``'s master (to refuse a broken one before
any fork; that object is thrown away) and by each worker at its start: it should read its
files there, but open connections and start threads on first use, inside the worker.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ConfigError
from ..hooks import Hooks

__all__ = ["GROUP", "BUILTINS", "PluginError", "resolve", "build"]

GROUP = "smtpfront.plugins"
BUILTINS: Mapping[str, str] = {
    "auth-file": "smtpfront.policy.auth_file:FileAuth",
    "auth-dovecot": "smtpfront.policy.auth_dovecot:DovecotAuth",
    "relay-policy": "smtpfront.policy.relay:RelayPolicy",
    "client-limits": "smtpfront.policy.limits:ClientLimits",
}
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class PluginError(ConfigError):
    """A plugin that cannot be found, imported or built; ``key`` names where it was configured."""


def _target(where: str, use: str) -> str:
    if _TARGET.fullmatch(use):
        return use
    found = [ep.value for ep in importlib.metadata.entry_points(group=GROUP, name=use)]
    if found:
        return found[0]
    if use in BUILTINS:
        return BUILTINS[use]
    known = sorted({*BUILTINS, *(ep.name for ep in importlib.metadata.entry_points(group=GROUP))})
    raise PluginError(where, f"{use!r} is neither package.module:Factory nor a registered plugin "
                             f"(known: {', '.join(known)})")


def resolve(where: str, use: str) -> Callable[..., Any]:
    """The factory ``use`` names; raises PluginError."""
    target = _target(where, use)
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise PluginError(where, f"{use!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise PluginError(where, f"{use!r}: {module_name} has no {attribute}")
    if not callable(factory):
        raise PluginError(where, f"{use!r}: {target} is not callable")
    return factory  # type: ignore[no-any-return]


def build(where: str, use: str, options: Mapping[str, Any]) -> Hooks:
    """Import and call the factory with ``options`` as keyword arguments; raises PluginError."""
    factory = resolve(where, use)
    try:
        plugin = factory(**options)
    except PluginError:
        raise
    except OSError as exc:
        name = f": {exc.filename}" if exc.filename else ""
        raise PluginError(where, f"{use!r} cannot be built: {exc.strerror or exc}{name}") from None
    except (TypeError, ValueError, LookupError, ImportError) as exc:
        raise PluginError(where, f"{use!r} cannot be built: {type(exc).__name__}: {exc}") from None
    if not isinstance(plugin, Hooks):
        raise PluginError(where, f"{use!r} returned a {type(plugin).__name__}, not a smtpfront.hooks.Hooks")
    return plugin
