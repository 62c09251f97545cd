"""XEP-0388 Extensible SASL Profile (SASL2) with XEP-0386 Bind 2, XEP-0198 inline
resumption and XEP-0484 FAST: what a client's <authenticate/> asks, and the XML of the
answers. The stream drives the exchange (c2s_negotiation.py) and completes it: resumption or
binding, then <success/> and the features of the authenticated stream (c2s.py).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from lxml import etree

from .. import ns
from ..delay import stamp
from ..errors import StreamError
from ..jid import JIDError, normalize_resource
from ..storage.fast_tokens import HT_DIGESTS, FastTokenStore
from . import sm

NS = "urn:xmpp:sasl:2"
NS_BIND2 = "urn:xmpp:bind:0"
NS_FAST = "urn:xmpp:fast:0"
FAST_MECHANISMS = tuple(HT_DIGESTS)  # in the order offered
# XEP-0388 §initiation: the user-agent's id is a UUID; software and device are short names.
MAX_USER_AGENT_ID = 128
MAX_USER_AGENT_TEXT = 256
# XEP-0386 §identifiers: the client's tag starts the resource, "<tag>/<random>"; 64
# characters are plenty for a software name.
MAX_TAG = 64


class MalformedRequest(Exception):
    """The <authenticate/> is refused before any SASL exchange: RFC 6120 §6.5.5."""


@dataclass(slots=True)
class AuthenticateRequest:
    """What an <authenticate/> asks for besides authentication."""

    mechanism: str
    initial_response: str | None  # the base64 text, None when absent
    client: str | None = None  # <user-agent id>
    software: str = ""
    device: str = ""
    bind: Any = None  # the <bind xmlns='urn:xmpp:bind:0'/> element (lxml)
    tag: str = ""
    resume: dict[str, str] | None = None  # attributes of <resume xmlns='urn:xmpp:sm:3'/>
    request_token: str | None = None  # XEP-0484: a token for this mechanism
    fast: bool = False  # XEP-0484 <fast/>: the mechanism's password is a token
    count: int | None = None
    invalidate: bool = False


def parse_authenticate(el: Any) -> AuthenticateRequest:
    """The request in an <authenticate/> element, or MalformedRequest."""
    request = AuthenticateRequest(el.get("mechanism", ""), None)
    for child in el:
        if not isinstance(child.tag, str):
            continue
        qname = etree.QName(child)
        if qname.namespace == NS and qname.localname == "initial-response":
            request.initial_response = (child.text or "").strip()
        elif qname.namespace == NS and qname.localname == "user-agent":
            _user_agent(request, child)
        elif qname.namespace == NS_BIND2 and qname.localname == "bind":
            request.bind = child
            request.tag = _tag(child)
        elif qname.namespace == sm.NS_SM and qname.localname == "resume":
            request.resume = dict(child.attrib)
        elif qname.namespace == NS_FAST and qname.localname == "request-token":
            request.request_token = child.get("mechanism", "")
        elif qname.namespace == NS_FAST and qname.localname == "fast":
            request.fast = True
            request.invalidate = child.get("invalidate") in ("1", "true")
            count = child.get("count")
            if count is not None:
                request.count = sm.parse_h(count)  # an unsignedInt, as 'h'
                if request.count is None:
                    raise MalformedRequest("<fast count> is a number")
    return request


def _user_agent(request: AuthenticateRequest, el: Any) -> None:
    client = el.get("id")
    if client is not None and not 0 < len(client) <= MAX_USER_AGENT_ID:
        raise MalformedRequest("<user-agent id> is too long")
    request.client = client
    for name in ("software", "device"):
        text = (el.findtext(f"{{{NS}}}{name}") or "").strip()
        if len(text) > MAX_USER_AGENT_TEXT:
            raise MalformedRequest(f"<{name}/> is too long")
        setattr(request, name, text)


def _tag(bind: Any) -> str:
    tag = (bind.findtext(f"{{{NS_BIND2}}}tag") or "").strip()
    if not tag:
        return ""
    if len(tag) > MAX_TAG:
        raise MalformedRequest("the bind <tag/> is too long")
    try:
        return normalize_resource(tag)  # RFC 7622 §3.4, as a resourcepart
    except JIDError as exc:
        raise MalformedRequest(f"the bind <tag/> is no resource: {exc}") from None


# --- the feature and the answers ----------------------------------------------------------


def feature_xml(mechanisms: list[str], inline: list[str]) -> str:
    """XEP-0388 §discovery, with what may be negotiated inline."""
    return (
        f"<authentication xmlns='{NS}'>"
        + "".join(f"<mechanism>{m}</mechanism>" for m in mechanisms)
        + ("<inline>" + "".join(inline) + "</inline>" if inline else "")
        + "</authentication>"
    )


def bind2_feature_xml(features: list[str]) -> str:
    """XEP-0386 §discovering-support: the features a bind request may enable."""
    listed = "".join(f"<feature var={quoteattr(var)}/>" for var in features)
    return f"<bind xmlns='{NS_BIND2}'><inline>{listed}</inline></bind>"


def fast_feature_xml() -> str:
    mechanisms = "".join(f"<mechanism>{m}</mechanism>" for m in FAST_MECHANISMS)
    return f"<fast xmlns='{NS_FAST}'>{mechanisms}</fast>"


def success_xml(additional: str, authorization: str, extra: list[str]) -> bytes:
    """XEP-0388 §success; `additional`: base64, or "" for none."""
    data = f"<additional-data>{additional}</additional-data>" if additional else ""
    return (
        f"<success xmlns='{NS}'>{data}<authorization-identifier>{_escape(authorization)}"
        f"</authorization-identifier>{''.join(extra)}</success>"
    ).encode()


def failure_xml(condition: str, text: str | None) -> bytes:
    """XEP-0388 §failure: an RFC 6120 §6.5 condition in the SASL namespace."""
    text_xml = f"<text xml:lang='en'>{_escape(text)}</text>" if text else ""
    return f"<failure xmlns='{NS}'><{condition} xmlns='{ns.SASL}'/>{text_xml}</failure>".encode()


def challenge_xml(data: str) -> bytes:
    return f"<challenge xmlns='{NS}'>{data}</challenge>".encode()


def token_xml(token: str, expiry: float) -> str:
    """XEP-0484 §token-response."""
    return f"<token xmlns='{NS_FAST}' expiry='{stamp(expiry)}' token={quoteattr(token)}/>"


def bound_xml(parts: list[str]) -> str:
    return f"<bound xmlns='{NS_BIND2}'>{''.join(parts)}</bound>"


def during_exchange(st: Any) -> str | None:
    """XEP-0388 §"During Authentication": the element names allowed, else a stream error."""
    if st.ns == NS and st.name in ("response", "abort"):
        return str(st.name)
    raise StreamError("policy-violation", "only <response/> or <abort/> while authenticating")


_STORES: weakref.WeakKeyDictionary[Any, FastTokenStore] = weakref.WeakKeyDictionary()


def fast_tokens(server: Any) -> FastTokenStore:
    """The server's FAST token store (one per Server object)."""
    store = _STORES.get(server)
    if store is None:
        assert server.storage is not None
        store = _STORES[server] = FastTokenStore(server.storage)
    return store


def _escape(text: str | None) -> str:
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
