"""RFC 7622 JIDs: `[localpart@]domainpart[/resourcepart]`, each part prepared with PRECIS.

Preparation is costly (Unicode tables, IDNA), and the same few thousand JIDs come back on every
stanza, so `parse_jid` and `normalize_domain` are cached.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

import idna
from precis_i18n import get_profile

# RFC 7622 §3.3.1 / §3.4.1: the localpart uses UsernameCaseMapped, the resourcepart OpaqueString.
_LOCAL_PROFILE = get_profile("UsernameCaseMapped")
_RESOURCE_PROFILE = get_profile("OpaqueString")
# RFC 7622 §3.3.1: characters the localpart must not contain, beyond what PRECIS disallows.
_LOCAL_FORBIDDEN = frozenset("\"&'/:<>@")
# RFC 7622 §3.1: every part is at most 1023 octets once prepared.
_MAX_PART_OCTETS = 1023
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")


class JIDError(ValueError):
    """The text is not a valid JID (or a part is not a valid JID part)."""


@dataclass(frozen=True, slots=True)
class JID:
    local: str  # "" when absent
    domain: str
    resource: str  # "" when absent

    @property
    def bare(self) -> str:
        return f"{self.local}@{self.domain}" if self.local else self.domain

    @property
    def full(self) -> str:
        return f"{self.bare}/{self.resource}" if self.resource else self.bare

    def __str__(self) -> str:
        return self.full


def _check_length(part: str, what: str) -> str:
    if len(part.encode()) > _MAX_PART_OCTETS:
        raise JIDError(f"{what} longer than {_MAX_PART_OCTETS} octets")
    return part


def normalize_local(text: str) -> str:
    """Prepare a localpart (RFC 7622 §3.3)."""
    try:
        local = _LOCAL_PROFILE.enforce(text)
    except UnicodeError as exc:
        raise JIDError(f"invalid localpart {text!r}: {_precis_reason(exc)}") from None
    bad = sorted(_LOCAL_FORBIDDEN.intersection(local))
    if bad:
        raise JIDError(f"invalid localpart {text!r}: must not contain {''.join(bad)!r}")
    return _check_length(local, "localpart")


def normalize_resource(text: str) -> str:
    """Prepare a resourcepart (RFC 7622 §3.4)."""
    try:
        resource = _RESOURCE_PROFILE.enforce(text)
    except UnicodeError as exc:
        raise JIDError(f"invalid resourcepart {text!r}: {_precis_reason(exc)}") from None
    return _check_length(resource, "resourcepart")


@lru_cache(maxsize=4096)
def normalize_domain(text: str) -> str:
    """Prepare a domainpart (RFC 7622 §3.2): an IP literal, or an IDNA2008 name in U-label form,
    lowercased, without a trailing dot."""
    # RFC 7622 §3.2: a single trailing dot is not significant.
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise JIDError("empty domainpart")
    if name.startswith("[") and name.endswith("]"):
        # RFC 7622 §3.2 via RFC 3986 §3.2.2: an IPv6 literal in brackets.
        try:
            return f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            raise JIDError(f"invalid IPv6 literal {text!r}") from None
    if _DOTTED_NUMBERS.fullmatch(name):
        # Only digits and dots: it must be a dotted IPv4 address, not a host name.
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise JIDError(f"invalid IPv4 address {text!r}") from None
    try:
        # UTS #46 mapping (case folding, width mapping, ideographic full stops), then IDNA2008;
        # kept as Unicode (U-labels) the way RFC 7622 §3.2 compares domainparts.
        domain = idna.decode(idna.encode(name, uts46=True))
    except UnicodeError as exc:  # idna.IDNAError, and encoding errors (lone surrogates)
        raise JIDError(f"invalid domainpart {text!r}: {exc}") from None
    return _check_length(domain, "domainpart")


@lru_cache(maxsize=65536)
def parse_jid(text: str) -> JID:
    """Split and prepare a JID (RFC 7622 §3.1), raising JIDError when any part is invalid."""
    # RFC 7622 §3.1: the resourcepart starts at the first '/', and may itself contain '/' and
    # '@'; in what remains, the localpart ends at the first '@'.
    prefix, slash, resource_text = text.partition("/")
    if slash and not resource_text:
        raise JIDError(f"empty resourcepart in {text!r}")
    local_text, at, domain_text = prefix.partition("@")
    if not at:
        local_text, domain_text = "", prefix
    elif not local_text:
        raise JIDError(f"empty localpart in {text!r}")
    return JID(
        normalize_local(local_text) if local_text else "",
        normalize_domain(domain_text),
        normalize_resource(resource_text) if resource_text else "",
    )


def _precis_reason(exc: UnicodeError) -> str:
    # precis-i18n reports e.g. "DISALLOWED/spaces" as the reason of a UnicodeEncodeError.
    return str(exc.reason) if isinstance(exc, UnicodeEncodeError) else str(exc)
