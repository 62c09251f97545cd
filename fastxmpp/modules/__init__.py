"""The control plane's protocol modules (see base.py for the interface)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from .base import Module


def builtin_modules(config: Config) -> list[type[Module]]:
    """The module classes to load, in start order (later ones may look up earlier ones)."""
    return []
