"""RFC 7622 JIDs: `[localpart@]domainpart[/resourcepart]`, each part prepared with PRECIS.

Preparation is costly (Unicode tables, IDNA), and the same few thousand JIDs come back on every
stanza, so `parse_jid` and `normalize_domain` are cached. Any client can make the server parse
JIDs of its choosing, so the caches are bounded by the memory they hold, not only by entries
(docs/SECURITY.md, "Every limit"), and pure-ASCII parts, the common case, skip the PRECIS tables.
"""

from __future__ import annotations

import ipaddress
import re
import sys
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
# Pure ASCII parts PRECIS leaves as they are (or only lowercases): RFC 8264 §9.1/§9.11 put
# U+0021..U+007E in IdentifierClass and U+0020..U+007E in FreeformClass; width mapping and NFC
# change no ASCII character, and the Bidi Rule applies only to strings with right-to-left
# characters (RFC 8265 §3.3.3, §4.2.3). tests/test_jid.py checks these against precis-i18n.
_IDENTIFIER_ASCII = re.compile(r"[\x21-\x7e]+")
_FREEFORM_ASCII = re.compile(r"[\x20-\x7e]+")
# Characters of one part before preparation. Preparation never makes a legitimate part much
# shorter (NFC composes at most a few characters into one, each still at least one octet), so
# a part longer than the 1023 octets it may have once prepared (RFC 7622 §3.1) is refused
# before any work, and no cache ever holds a key longer than this per part.
MAX_PART_INPUT = _MAX_PART_OCTETS
# Memory the parse_jid cache may hold (keys, JIDs and their strings, dict slots): some 45,000
# JIDs of ordinary length, or about 1,800 of the longest; when full it starts over.
PARSE_CACHE_BYTES = 16 * 1024 * 1024
# Per entry beyond its strings: the dict slot, the JID object, the cached entry's share of
# the dict's spare room (measured with tracemalloc on CPython 3.11: about 190 bytes).
CACHE_ENTRY_OVERHEAD = 256


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


def _check_input(text: str, what: str) -> None:
    if len(text) > MAX_PART_INPUT:
        raise JIDError(f"{what} longer than {MAX_PART_INPUT} characters")


def normalize_local(text: str) -> str:
    """Prepare a localpart (RFC 7622 §3.3)."""
    _check_input(text, "localpart")
    if _IDENTIFIER_ASCII.fullmatch(text):
        local = text.lower()  # UsernameCaseMapped of ASCII: case mapping only
    else:
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
    _check_input(text, "resourcepart")
    if _FREEFORM_ASCII.fullmatch(text):
        return _check_length(text, "resourcepart")  # OpaqueString of ASCII: unchanged
    try:
        resource = _RESOURCE_PROFILE.enforce(text)
    except UnicodeError as exc:
        raise JIDError(f"invalid resourcepart {text!r}: {_precis_reason(exc)}") from None
    return _check_length(resource, "resourcepart")


@lru_cache(maxsize=4096)
def normalize_domain(text: str) -> str:
    """Prepare a domainpart (RFC 7622 §3.2): an IP literal, or an IDNA2008 name in U-label form,
    lowercased, without a trailing dot."""
    _check_input(text, "domainpart")  # with the 4096 entries: at most 16 MiB of keys
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


_parsed: dict[str, JID] = {}
_parsed_bytes = 0


def parse_jid(text: str) -> JID:
    """Split and prepare a JID (RFC 7622 §3.1), raising JIDError when any part is invalid.
    Cached within PARSE_CACHE_BYTES."""
    global _parsed_bytes
    jid = _parsed.get(text)
    if jid is not None:
        return jid
    jid = _parse(text)
    cost = entry_cost(text, jid.local, jid.resource)
    if _parsed_bytes + cost > PARSE_CACHE_BYTES:
        _parsed.clear()
        _parsed_bytes = 0
    _parsed[text] = jid
    _parsed_bytes += cost
    return jid


def entry_cost(*texts: str) -> int:
    """What a cache entry holding `texts` costs in memory, in bytes (an estimate that never
    counts less than the strings themselves)."""
    return CACHE_ENTRY_OVERHEAD + sum(sys.getsizeof(t) for t in texts)


def _parse(text: str) -> JID:
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
