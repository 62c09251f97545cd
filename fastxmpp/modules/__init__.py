"""The control plane's protocol modules (see base.py for the interface, docs/MODULES.md for
writing one).

Each module file defines one `Module` subclass named in its `MODULE` attribute. Modules from
other packages are found through the `fastxmpp.modules` entry-point group and loaded, after
the built-in ones, only when the configuration names them ([modules] load).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from ..config import MODULE_ENTRY_POINTS

if TYPE_CHECKING:
    from ..config import Config

from .base import Module, ModuleLoadError

__all__ = ["BUILTIN", "Module", "ModuleLoadError", "builtin_modules", "configured_modules"]

# Start order: later modules may look up earlier ones through `hub.get(name)`. The order in
# which modules see a stanza is not this one: fastxmpp/pipeline.py's ORDER writes it down.
BUILTIN = (
    "roster",  # RFC 6121 §2
    "presence",  # RFC 6121 §3, §4 (subscriptions, broadcast, probes, directed presence)
    "privacy",  # XEP-0016 privacy lists, XEP-0191 blocking command
    "offline",  # RFC 6121 §8.5.2.2.1 storage, XEP-0203 delay stamps
    "disco",  # XEP-0030
    "ping",  # XEP-0199
    "version",  # XEP-0092
    "external_services",  # XEP-0215 STUN/TURN for calls, TURN REST credentials
    "entity_time",  # XEP-0202
    "last",  # XEP-0012
    "private",  # XEP-0049
    "register",  # XEP-0077
    "legacy_auth",  # XEP-0078
    "vcard",  # XEP-0054
    "pep",  # XEP-0163 (XEP-0060 subset, XEP-0115 filtering)
    "avatars",  # XEP-0398 vCard <-> PEP avatar conversion, XEP-0153 presence hashes
    "bookmarks",  # XEP-0402 <-> XEP-0048 (PEP, XEP-0049) bookmarks kept in sync
    "muc",  # XEP-0045 (a service domain, Router.add_service)
    "carbons",  # XEP-0280
    "mam",  # XEP-0313 user archives, XEP-0359 stanza-ids
    "push",  # XEP-0357 push notifications to app servers
    "upload",  # XEP-0363 HTTP file upload (a service domain, files on the http listener)
    "adhoc",  # XEP-0050 ad-hoc commands: XEP-0133 service administration
)


def builtin_modules(config: Config) -> list[type[Module]]:
    """The module classes to load, in start order. Every built-in module is required: none
    has an optional dependency, so any import failure is an error naming the module and the
    cause, never a warning followed by an unrelated traceback."""
    classes: list[type[Module]] = []
    for name in BUILTIN:
        qualified = f"{__name__}.{name}"
        try:
            module = importlib.import_module(qualified)
        except ImportError as exc:
            raise ModuleLoadError(
                f"cannot load module {name} ({qualified}): {type(exc).__name__}: {exc}"
            ) from exc
        classes.append(module.MODULE)
    return classes


def configured_modules(config: Config) -> list[type[Module]]:
    """The built-in modules, then the modules from other packages that `config` names, in
    the order it names them. An installed package does nothing until named: installing is
    not enabling."""
    classes = builtin_modules(config)
    for name in config.modules.load:
        classes.append(extension_module(name))
    return classes


def extension_module(name: str) -> type[Module]:
    """The Module class a package installed under entry point `name` provides."""
    if name in BUILTIN:
        raise ModuleLoadError(f"module {name}: the name of a built-in module")
    found = entry_points(group=MODULE_ENTRY_POINTS, name=name)
    if not found:
        raise ModuleLoadError(
            f"module {name} is not installed (no {MODULE_ENTRY_POINTS!r} entry point named "
            f"{name!r})"
        )
    entry = next(iter(found))
    try:
        cls = entry.load()
    except Exception as exc:  # any error of the other package's import
        raise ModuleLoadError(
            f"cannot load module {name} ({entry.value}): {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise ModuleLoadError(f"module {name} ({entry.value}) is not a fastxmpp Module class")
    if cls.name != name:
        raise ModuleLoadError(
            f"module {name} ({entry.value}) calls itself {cls.name!r}: the entry point's "
            "name and the class's `name` must be the same"
        )
    return cls
