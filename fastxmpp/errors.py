"""XMPP errors as exceptions, and the one place that turns them into XML.

Handlers raise `StanzaError` or `StreamError`; the stream code catches them and calls
`stanza_error_bytes` / `stream_error_bytes`. RFC 6120 §4.9 (stream errors), §8.3 (stanza errors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

from . import ns

if TYPE_CHECKING:
    from ._parser import Stanza

# RFC 6120 §4.9.3: every defined stream error condition.
STREAM_CONDITIONS = frozenset(
    {
        "bad-format",
        "bad-namespace-prefix",
        "conflict",
        "connection-timeout",
        "host-gone",
        "host-unknown",
        "improper-addressing",
        "internal-server-error",
        "invalid-from",
        "invalid-namespace",
        "invalid-xml",
        "not-authorized",
        "not-well-formed",
        "policy-violation",
        "remote-connection-failed",
        "reset",
        "resource-constraint",
        "restricted-xml",
        "see-other-host",
        "system-shutdown",
        "undefined-condition",
        "unsupported-encoding",
        "unsupported-feature",
        "unsupported-stanza-type",
        "unsupported-version",
    }
)

# RFC 6120 §8.3.3: each stanza error condition with the error type the RFC gives in its example.
STANZA_CONDITION_TYPES = {
    "bad-request": "modify",
    "conflict": "cancel",
    "feature-not-implemented": "cancel",
    "forbidden": "auth",
    "gone": "cancel",
    "internal-server-error": "cancel",
    "item-not-found": "cancel",
    "jid-malformed": "modify",
    "not-acceptable": "modify",
    "not-allowed": "cancel",
    "not-authorized": "auth",
    "policy-violation": "modify",
    "recipient-unavailable": "wait",
    "redirect": "modify",
    "registration-required": "auth",
    "remote-server-not-found": "cancel",
    "remote-server-timeout": "wait",
    "resource-constraint": "wait",
    "service-unavailable": "cancel",
    "subscription-required": "auth",
    "undefined-condition": "cancel",
    "unexpected-request": "wait",
}


# XEP-0086 §3: the legacy (pre-XMPP) 'code' of each stanza error condition. A condition the
# table does not name (RFC 6120's policy-violation) is, to a legacy entity, undefined: it gets
# the code of <undefined-condition/>, LEGACY_FALLBACK_CODE.
LEGACY_CODES = {
    "bad-request": "400",
    "conflict": "409",
    "feature-not-implemented": "501",
    "forbidden": "403",
    "gone": "302",
    "internal-server-error": "500",
    "item-not-found": "404",
    "jid-malformed": "400",
    "not-acceptable": "406",
    "not-allowed": "405",
    "not-authorized": "401",
    "payment-required": "402",
    "recipient-unavailable": "404",
    "redirect": "302",
    "registration-required": "407",
    "remote-server-not-found": "404",
    "remote-server-timeout": "504",
    "resource-constraint": "500",
    "service-unavailable": "503",
    "subscription-required": "407",
    "undefined-condition": "500",
    "unexpected-request": "400",
}

LEGACY_FALLBACK_CODE = "500"

# Set once at server start from `config.legacy.error_codes` (see `set_legacy_codes`).
_legacy_codes = False


def set_legacy_codes(enabled: bool) -> None:
    """XEP-0086: when on, every stanza error this server makes carries the legacy code."""
    global _legacy_codes
    _legacy_codes = enabled


def legacy_codes_enabled() -> bool:
    return _legacy_codes


class StreamError(Exception):
    """A condition that ends the stream (RFC 6120 §4.9)."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in STREAM_CONDITIONS:
            raise ValueError(f"unknown stream error condition {condition!r}")
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text


class StanzaError(Exception):
    """A condition returned to the sender of one stanza (RFC 6120 §8.3)."""

    def __init__(
        self,
        condition: str,
        text: str | None = None,
        error_type: str | None = None,
        app_xml: str = "",
        payload_xml: str = "",
    ) -> None:
        if condition not in STANZA_CONDITION_TYPES:
            raise ValueError(f"unknown stanza error condition {condition!r}")
        super().__init__(f"{condition}: {text}" if text else condition)
        self.condition = condition
        self.text = text
        self.error_type = error_type or STANZA_CONDITION_TYPES[condition]
        # An application-specific condition element (RFC 6120 §8.3.4), serialized: XEP-0060's
        # <precondition-not-met/>, XEP-0191's <blocked/>, ...
        self.app_xml = app_xml
        # The original payload, serialized, put before the <error/> (RFC 6120 §8.3.1: an
        # error MAY include the original XML, a courtesy the sender must not depend on).
        self.payload_xml = payload_xml


def answered(err: StreamError | StanzaError) -> None:
    """`err` has been turned into what goes on the wire: drop its traceback. A handler that
    raised an error it held in a local variable (`raise refusal`) left a cycle, the error's
    frames holding the error, and through their callers' frames the stream: freed only by
    the collector's full collection (docs/PERFORMANCE.md, "Connections freed without the
    garbage collector")."""
    drop_tracebacks(err)


def drop_tracebacks(exc: BaseException) -> None:
    """`exc` and the exceptions it was raised from or while handling, without tracebacks."""
    cause: BaseException | None = exc
    while cause is not None:
        cause.__traceback__ = None
        cause = cause.__cause__ or cause.__context__


def stream_error_bytes(condition: str, text: str | None = None, app_xml: str = "") -> bytes:
    """`<stream:error>` for a stream whose root declared the `stream` prefix (RFC 6120 §4.9.2);
    `app_xml` is an application-specific condition element (§4.9.4), already serialized."""
    text_xml = (
        f"<text xmlns='{ns.STREAM_ERRORS}' xml:lang='en'>{escape(text)}</text>" if text else ""
    )
    return (
        f"<stream:error><{condition} xmlns='{ns.STREAM_ERRORS}'/>{text_xml}{app_xml}</stream:error>"
    ).encode()


def error_element_xml(
    condition: str, error_type: str, text: str | None = None, app_xml: str = ""
) -> str:
    """The `<error/>` child of an error stanza (RFC 6120 §8.3.2), with the XEP-0086 legacy
    'code' when that is switched on and an application-specific condition (§8.3.4)."""
    text_xml = (
        f"<text xmlns='{ns.STANZA_ERRORS}' xml:lang='en'>{escape(text)}</text>" if text else ""
    )
    code_attr = ""
    if _legacy_codes:
        code_attr = f" code='{LEGACY_CODES.get(condition, LEGACY_FALLBACK_CODE)}'"
    return (
        f"<error{code_attr} type='{error_type}'><{condition} xmlns='{ns.STANZA_ERRORS}'/>"
        f"{text_xml}{app_xml}</error>"
    )


def stanza_error_bytes(
    kind: str,
    stanza_id: str | None,
    from_jid: str | None,
    to_jid: str | None,
    error: StanzaError,
    original: str = "",
) -> bytes:
    """An error reply: kind of the original, type='error', addresses swapped by the caller;
    `original`: the payload of the stanza it answers, where the error has none of its own."""
    attrs = " type='error'"
    if stanza_id is not None:
        attrs += " id=" + quoteattr(stanza_id)
    if from_jid:
        attrs += " from=" + quoteattr(from_jid)
    if to_jid:
        attrs += " to=" + quoteattr(to_jid)
    body = error_element_xml(error.condition, error.error_type, error.text, error.app_xml)
    return f"<{kind}{attrs}>{error.payload_xml or original}{body}</{kind}>".encode()


def bounced_payload(st: Stanza) -> str:
    """What a bounced message carried, to go back in its error (RFC 6120 §8.3.1 MAY, as the
    examples of XEP-0045 §7.4 and §7.5 show it): Pidgin and Finch (libpurple) tell their user
    that a message failed only when the error holds its <body/>. The received bytes as they
    are, so that they inherit the namespace of whichever stream the error goes on; left out
    where they would not stand alone (a prefix declared on the message or outside it), and
    for other stanzas, whose payloads are requests rather than words a person wrote."""
    if st.name != "message" or st.empty or st.needs_reserialize:
        return ""
    if st.nsdecls and any(prefix is not None for prefix, _ in st.nsdecls):
        return ""
    raw = st.raw
    return raw[st.start_len : raw.rindex(b"</")].decode()
