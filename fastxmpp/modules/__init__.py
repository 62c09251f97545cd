"""The control plane's protocol modules (see base.py for the interface).

Each module file defines one `Module` subclass named in its `MODULE` attribute.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from .base import Module

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
    "entity_time",  # XEP-0202
    "last",  # XEP-0012
    "private",  # XEP-0049
    "register",  # XEP-0077
    "legacy_auth",  # XEP-0078
    "vcard",  # XEP-0054
    "pep",  # XEP-0163 (XEP-0060 subset, XEP-0115 filtering)
    "muc",  # XEP-0045 (a service domain, Router.add_service)
    "carbons",  # XEP-0280
    "mam",  # XEP-0313 user archives, XEP-0359 stanza-ids
)


class ModuleLoadError(Exception):
    """A module the server needs cannot be imported: the installation is incomplete or
    broken. The server does not start without it (a missing feature must not pass for a
    working server)."""


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
