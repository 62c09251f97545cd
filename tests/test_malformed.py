"""A corpus of malformed and hostile input over raw sockets (issue 5).

Each case brings a hostile client (alice) to a stage of its stream — connected, stream header
sent, TLS, SASL, bound — and sends its bytes there. The answer must be exactly what RFC 6120
names: a stream error (then the connection is closed), a stanza error, a SASL or TLS
failure, or, for input the RFCs accept, delivery or silence. After every case a bystander
pair logged in before it (bob and carol) still exchange messages sent after the hostile
connection was closed, and nothing of the hostile input reached them; the server process is
alive. Older cases live in tests/test_c2s_raw.py and tests/test_parser.py.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import PASSWORD, ServerProcess
from xmpp_raw import BIND, CLIENT, HEADER, SASL, STREAMS, TLS, RawClient, stanza_error

from fastxmpp.config import LimitsConfig

BOB = "bob@localhost/by"
CAROL = "carol@localhost/by"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Where the hostile client stands when it sends: "-prolog" stages wait for a new stream
# header (after TLS and after SASL, RFC 6120 §4.3.3).
STAGES = ("connected", "header", "tls-prolog", "tls", "auth-prolog", "auth", "bound")
PROLOG_STAGES = ("connected", "tls-prolog", "auth-prolog")
IN_STREAM_STAGES = ("header", "tls", "auth", "bound")

DECL = b"<?xml version='1.0'?>"
OPEN = HEADER.format(to="localhost").encode()
OPEN_NO_DECL = OPEN[len(DECL) :]
STD_NS = "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
STD_ATTRS = f"{STD_NS} to='localhost' version='1.0'"


def header(attrs: str, root: str = "stream:stream") -> bytes:
    """A stream header with exactly these attributes (namespace declarations included)."""
    return f"<?xml version='1.0'?><{root} {attrs}>".encode()


def to_bob(inner: bytes | str = b"<body>hi</body>", attrs: bytes | str = b"") -> bytes:
    """A message to the bystander bob: a leak of hostile input would show."""
    inner = inner.encode() if isinstance(inner, str) else inner
    attrs = attrs.encode() if isinstance(attrs, str) else attrs
    return b"<message to='" + BOB.encode() + b"'" + attrs + b">" + inner + b"</message>"


def body(raw: bytes) -> bytes:
    return to_bob(b"<body>" + raw + b"</body>")


def billion_laughs() -> bytes:
    entities = b"<!ENTITY l0 'lol'>" + b"".join(
        b"<!ENTITY l%d '%s'>" % (i, b"&l%d;" % (i - 1) * 10) for i in range(1, 10)
    )
    return b"<!DOCTYPE stream:stream [" + entities + b"]>"


def tls_client_hello() -> bytes:
    """The first flight of a real TLS client."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def utf16(data: bytes, codec: str, bom: bytes = b"") -> bytes:
    return bom + data.decode().encode(codec)


Case = tuple[str, bytes, str]


def add(table: dict[str, Case], stage: str, condition: str, cases: dict[str, bytes]) -> None:
    for name, data in cases.items():
        assert name not in table, name
        table[name] = (stage, data, condition)


# --- cases answered with a stream error (RFC 6120 §4.9.3) --------------------------------------

STREAM_ERRORS: dict[str, Case] = {}

# §4.9.3.22: a stream that breaks the rules of UTF-8 is unsupported-encoding.
add(STREAM_ERRORS, "bound", "unsupported-encoding", {
    "utf8-overlong-2-byte": body(b"\xc0\xaf"),
    "utf8-overlong-3-byte": body(b"\xe0\x80\xaf"),
    "utf8-overlong-4-byte": body(b"\xf0\x80\x80\xaf"),
    "utf8-lone-continuation-byte": body(b"a\x80b"),
    "utf8-encoded-high-surrogate": body(b"\xed\xa0\x80"),
    "utf8-encoded-low-surrogate": body(b"\xed\xbf\xbf"),
    "utf8-beyond-u10ffff": body(b"\xf4\x90\x80\x80"),
    "utf8-byte-ff": body(b"\xff"),
    "utf8-byte-fe": body(b"\xfe"),
    "utf8-truncated-3-byte-at-end-tag": body(b"x\xe2\x82"),
    "utf8-truncated-4-byte-at-end-tag": body(b"x\xf0\x9f\x98"),
    "utf8-truncated-in-attribute-value": to_bob(attrs=b" id='\xe2\x82'"),
    "utf8-latin-1-text": body(b"caf\xe9"),
    "utf8-cp1252-quotes": body(b"\x93hi\x94"),
    "utf8-broken-in-element-name": to_bob(b"<bo\xc3dy>x</bo\xc3dy>"),
    "utf8-broken-in-attribute-name": to_bob(attrs=b" \xff='1'"),
    "binary-garbage-after-login": b"\x8f\xa3\x00\x17\xfe",
})  # fmt: skip
add(STREAM_ERRORS, "connected", "unsupported-encoding", {
    "utf8-broken-before-header": b"\xc0\xaf" + OPEN,
    "utf8-broken-in-header": header(STD_ATTRS).replace(b"'localhost'", b"'local\xe9host'"),
    "zlib-without-negotiation": zlib.compress(OPEN),
    "declared-latin-1": OPEN.replace(b"'1.0'?>", b"'1.0' encoding='ISO-8859-1'?>"),
    # §11.6: UTF-8 only. On these first bytes expat would switch to UTF-16 whatever it was
    # told (XML 1.0 Appendix F), and forward UTF-16 stanzas into UTF-8 streams.
    "utf16le-with-bom": utf16(OPEN, "utf-16-le", b"\xff\xfe"),
    "utf16be-with-bom": utf16(OPEN, "utf-16-be", b"\xfe\xff"),
    "utf16le-without-bom": utf16(OPEN, "utf-16-le"),
    "utf16be-without-bom": utf16(OPEN, "utf-16-be"),
    "utf32le-with-bom": utf16(OPEN, "utf-32"),
    "utf32be-without-bom": utf16(OPEN, "utf-32-be"),
})  # fmt: skip
add(STREAM_ERRORS, "tls", "unsupported-encoding", {
    "utf8-broken-before-auth": body(b"\xed\xa0\x80"),
})  # fmt: skip
add(STREAM_ERRORS, "tls-prolog", "unsupported-encoding", {
    "utf8-broken-after-tls-restart": b"\xf8\x88\x80\x80\x80" + OPEN,
    "utf16-after-tls-restart": utf16(OPEN, "utf-16-le", b"\xff\xfe"),
    "declared-utf16-after-tls-restart": OPEN.replace(b"'1.0'?>", b"'1.0' encoding='UTF-16'?>"),
})  # fmt: skip
add(STREAM_ERRORS, "auth-prolog", "unsupported-encoding", {
    "utf8-broken-after-sasl-restart": b"\xc1\xbf" + OPEN,
    "utf16-after-sasl-restart": utf16(OPEN, "utf-16-be"),
})  # fmt: skip

# §4.9.3.13 not-well-formed: characters outside XML 1.0's Char production (XML §2.2), also
# as character references (§4.1 "Legal Character"). §11.6: U+FEFF is a zero width no-break
# space, never a byte order mark; as text before the root element it is not well-formed.
add(STREAM_ERRORS, "bound", "not-well-formed", {
    "xml-char-c0-control-in-text": body(b"a\x01b"),
    "xml-char-vertical-tab-in-text": body(b"a\x0bb"),
    "xml-char-escape-in-attribute": to_bob(attrs=b" id='\x1b[31m'"),
    "xml-char-nul-in-text": body(b"a\x00b"),
    "xml-char-nul-in-attribute": to_bob(attrs=b" id='a\x00b'"),
    "xml-char-nul-in-element-name": b"<mess\x00age/>",
    "xml-char-ufffe-in-text": body("\ufffe".encode()),
    "xml-char-uffff-in-attribute": to_bob(attrs=" id='\uffff'".encode()),
    "xml-char-charref-0": body(b"&#0;"),
    "xml-char-charref-x1": body(b"&#x1;"),
    "xml-char-charref-xfffe": body(b"&#xFFFE;"),
    "xml-char-charref-surrogate": body(b"&#xD800;"),
    "xml-char-charref-beyond-u10ffff": body(b"&#x110000;"),
    "xml-char-charref-huge-number": body(b"&#99999999999999999999;"),
    "xml-char-charref-in-attribute": to_bob(attrs=b" id='&#x1;'"),
    "xml-char-charref-bad-digits": body(b"&#xZZ;"),
    "xml-char-control-char-between-stanzas": b"\x07",
})  # fmt: skip
add(STREAM_ERRORS, "connected", "not-well-formed", {
    "xml-char-control-in-header": header(STD_ATTRS).replace(b"'localhost'", b"'local\x01host'"),
    "xml-char-control-before-header": b"\x01" + OPEN,
    "xml-char-nul-first-byte": b"\x00 " + OPEN,
    "utf8-bom-before-header": b"\xef\xbb\xbf" + OPEN,
})  # fmt: skip
add(STREAM_ERRORS, "header", "not-well-formed", {"xml-char-before-auth": body(b"&#x8;")})

# §4.9.3.13: XML 1.0 and Namespaces in XML well-formedness. A stanza cut short by the end
# of the stream is never acted on (§8, "Security Warning"). Inside the stream an XML
# declaration is not XML at all.
add(STREAM_ERRORS, "bound", "not-well-formed", {
    "structure-unclosed-then-stream-end": to_bob()[: -len(b"</message>")] + b"</stream:stream>",
    "structure-stream-closed-inside-stanza": to_bob(b"<body>hi</stream:stream>"),
    "structure-mismatched-end-tag": to_bob(b"<body>hi</bdy>"),
    "structure-stray-end-tag": b"</message>",
    "structure-end-tag-other-prefix": b"<message></c:message>",
    "structure-stream-closed-with-wrong-name": b"</stream:features>",
    "structure-less-than-in-attribute": b"<message to='bob@localhost/by<'/>",
    "structure-attribute-without-value": b"<message to/>",
    "structure-attribute-unquoted": b"<message to=bob@localhost/>",
    "structure-less-than-in-text": body(b"a < b"),
    "structure-bare-ampersand": body(b"AT&T"),
    "structure-name-starting-with-digit": b"<1message/>",
    "structure-xml-declaration-inside-stream": DECL,
    "structure-duplicate-attribute": to_bob(attrs=b" id='a' id='b'"),
    "structure-duplicate-xml-lang": to_bob(attrs=b" xml:lang='en' xml:lang='de'"),
    "structure-duplicate-qualified-attribute": to_bob(
        attrs=b" xmlns:a='urn:x' xmlns:b='urn:x' a:id='1' b:id='2'"
    ),
    "structure-duplicate-namespace-declaration": to_bob(attrs=b" xmlns:a='urn:x' xmlns:a='urn:y'"),
    "structure-undeclared-attribute-prefix": to_bob(attrs=b" foo:bar='1'"),
    "structure-undeclared-element-prefix": to_bob(b"<x:y/>"),
    "structure-xml-prefix-rebound": to_bob(attrs=b" xmlns:xml='urn:x'"),
    "structure-xml-namespace-other-prefix": to_bob(
        attrs=b" xmlns:foo='http://www.w3.org/XML/1998/namespace' foo:lang='en'"
    ),
    "structure-xmlns-prefix-declared": to_bob(attrs=b" xmlns:xmlns='urn:x'"),
    "structure-prefix-undeclared-by-empty-name": to_bob(
        b"<a:b xmlns:a='urn:a'><c xmlns:a=''/></a:b>"
    ),
})  # fmt: skip
add(STREAM_ERRORS, "connected", "not-well-formed", {
    "structure-text-before-header": b"hello" + OPEN,
    "structure-two-xml-declarations": DECL + OPEN,
    "structure-xml-declaration-after-space": b" " + OPEN,
    "structure-duplicate-header-attribute": header(STD_ATTRS + " to='example.test'"),
    "structure-stream-prefix-undeclared": header("xmlns='jabber:client' to='localhost'"),
})  # fmt: skip
add(STREAM_ERRORS, "header", "not-well-formed", {
    "structure-mismatch-before-auth": f"<auth xmlns='{SASL}'></a>".encode(),
})  # fmt: skip

# §11.1, §4.9.3.18 restricted-xml: DTDs, entity declarations and references, comments and
# processing instructions; in XML's prolog before each stream header (at the start and at
# each restart), and inside the stream at each stage.
PROLOG_RESTRICTED = {
    "billion-laughs": billion_laughs(),
    "external-entity": b"<!DOCTYPE stream:stream [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]>",
    "external-dtd-system": b"<!DOCTYPE stream:stream SYSTEM 'file:///etc/passwd'>",
    "external-dtd-public": (
        b"<!DOCTYPE stream:stream PUBLIC '-//Evil//DTD X//EN' 'http://127.0.0.1:9/x.dtd'>"
    ),
    "parameter-entity": (
        b"<!DOCTYPE stream:stream [<!ENTITY % pe SYSTEM 'file:///etc/passwd'> %pe;]>"
    ),
    "doctype": b"<!DOCTYPE stream:stream>",
    "comment": b"<!-- hello -->",
    "processing-instruction": b"<?evil data?>",
}
IN_STREAM_RESTRICTED = {
    "entity-reference": body(b"&l9;"),
    "entity-reference-in-attribute": to_bob(attrs=b" id='&xxe;'"),
    "comment-between-stanzas": b"<!-- hello -->",
    "comment-in-stanza": body(b"a<!-- hello -->b"),
    "processing-instruction-between-stanzas": b"<?evil data?>",
    "processing-instruction-in-stanza": to_bob(b"<?evil data?>"),
}
# Inside the stream these are no XML at all (§4.9.3.13): markup declarations belong to
# the prolog.
IN_STREAM_DECLARATIONS = {
    "billion-laughs": billion_laughs(),
    "external-dtd-system": PROLOG_RESTRICTED["external-dtd-system"],
    "external-dtd-public": PROLOG_RESTRICTED["external-dtd-public"],
    "parameter-entity": b"<!ENTITY % pe SYSTEM 'file:///etc/passwd'>%pe;",
}
for stage in IN_STREAM_STAGES:
    add(STREAM_ERRORS, stage, "not-well-formed", {
        f"structure-{name}-inside-stream-{stage}": data
        for name, data in IN_STREAM_DECLARATIONS.items()
    })  # fmt: skip
for stage in PROLOG_STAGES:
    add(STREAM_ERRORS, stage, "restricted-xml", {
        f"restricted-{name}-{stage}": DECL + raw + OPEN_NO_DECL
        for name, raw in PROLOG_RESTRICTED.items()
    })  # fmt: skip
for stage in IN_STREAM_STAGES:
    add(STREAM_ERRORS, stage, "restricted-xml", {
        f"restricted-{name}-{stage}": data for name, data in IN_STREAM_RESTRICTED.items()
    })  # fmt: skip

# §4.9.3.14 policy-violation: beyond the configured limits (limits.max_stanza_size,
# max_attributes, max_depth). Oversized inputs end with the byte that crosses the size
# limit: bytes sent after it would still be unread when the server closes, and the TCP
# reset of that close can destroy the stream error on its way to the client.
MAX_STANZA = LimitsConfig().max_stanza_size
MANY_ATTRIBUTES = b"".join(b" a%d='1'" % i for i in range(65))
# Namespace declarations are attributes in the bytes: they count towards max_attributes.
MANY_DECLARATIONS = b"".join(b" xmlns:p%d='urn:x:%d'" % (i, i) for i in range(65))
HALF_AND_HALF = b"".join(b" a%d='1' xmlns:p%d='urn:x'" % (i, i) for i in range(33))  # 66
MAX_ELEMENTS = LimitsConfig().max_elements


def over_limit(start: bytes, filler: bytes = b"A") -> bytes:
    return start + filler * (MAX_STANZA + 1 - len(start))


add(STREAM_ERRORS, "bound", "policy-violation", {
    "limit-huge-attribute-value": over_limit(f"<message to='{BOB}' id='".encode()),
    "limit-huge-element-name": over_limit(b"<m", b"m"),
    "limit-endless-stanza": over_limit(body(b"")[: -len(b"</body></message>")], b"B"),
    "limit-too-many-attributes": to_bob(attrs=MANY_ATTRIBUTES),
    "limit-too-many-attributes-in-payload": to_bob(b"<x" + MANY_ATTRIBUTES + b"/>"),
    "limit-too-many-namespace-declarations": to_bob(attrs=MANY_DECLARATIONS),
    "limit-too-many-namespace-declarations-in-payload": to_bob(
        b"<x" + MANY_DECLARATIONS + b"/>"),
    "limit-attributes-and-declarations-together": to_bob(b"<x" + HALF_AND_HALF + b"/>"),
    # the message, its payload and MAX_ELEMENTS - 1 children: one too many
    "limit-too-many-elements": to_bob(b"<x>" + b"<a/>" * (MAX_ELEMENTS - 1) + b"</x>"),
    "limit-too-many-direct-children": to_bob(b"<a/>" * MAX_ELEMENTS),
    "limit-nesting-too-deep": to_bob(b"<a>" * 70 + b"</a>" * 70),
    # The element that crosses the depth limit is empty (found by this corpus: the cut
    # stanza used to be routed to bob before the error, breaking his stream).
    "limit-nesting-too-deep-at-empty-element": to_bob(b"<a>" * 62 + b"<b/>" + b"</a>" * 62),
})  # fmt: skip
add(STREAM_ERRORS, "connected", "policy-violation", {
    "limit-huge-attribute-in-header": over_limit(header(STD_ATTRS)[:-1] + b" id='"),
    "limit-too-many-attributes-in-header": header(STD_ATTRS + MANY_ATTRIBUTES.decode()),
})  # fmt: skip

# §4.8 namespaces. §4.9.3.10 invalid-namespace: the root is not <stream/> in the stream
# namespace, or the default (content) namespace is not jabber:client. §4.9.3.2
# bad-namespace-prefix: the stream prefix must be 'stream' (§4.8.5), content-namespace
# elements carry none.
add(STREAM_ERRORS, "connected", "invalid-namespace", {
    "ns-wrong-default-namespace": header(STD_ATTRS.replace("jabber:client", "urn:wrong")),
    "ns-no-default-namespace": header(STD_ATTRS.replace("xmlns='jabber:client' ", "")),
    "ns-empty-default-namespace": header(STD_ATTRS.replace("jabber:client", "")),
    "ns-content-namespace-prefixed": header(STD_ATTRS.replace("xmlns=", "xmlns:c=")),
    "ns-stream-namespace-as-content": header(
        STD_ATTRS.replace("jabber:client", "http://etherx.jabber.org/streams")
    ),
    "ns-stream-prefix-bound-to-content": header(
        "xmlns='jabber:client' xmlns:stream='jabber:client' to='localhost' version='1.0'"
    ),
    "ns-root-not-stream": header(STD_ATTRS, root="stream:features"),
    "ns-html-root": DECL + b"<html><body>hi</body></html>",
})  # fmt: skip
add(STREAM_ERRORS, "connected", "bad-namespace-prefix", {
    "ns-stream-namespace-unprefixed": header(
        "xmlns='http://etherx.jabber.org/streams' to='localhost' version='1.0'", root="stream"
    ),
})  # fmt: skip
add(STREAM_ERRORS, "header", "bad-namespace-prefix", {
    "ns-prefixed-stanza-before-auth": b"<c:message xmlns:c='jabber:client'/>",
})  # fmt: skip
add(STREAM_ERRORS, "bound", "bad-namespace-prefix", {
    "ns-stream-prefix-rebound-on-stanza": b"<stream:message xmlns:stream='jabber:client' to='"
    + BOB.encode() + b"'><body>x</body></stream:message>",
    "ns-prefixed-iq": b"<c:iq xmlns:c='jabber:client' type='get' id='p'>"
    b"<ping xmlns='urn:xmpp:ping'/></c:iq>",
})  # fmt: skip

# §4.9.3.24 unsupported-stanza-type: a first-level element the server takes at no stage
# (so also before authentication: it is no stanza waiting for authentication).
add(STREAM_ERRORS, "bound", "unsupported-stanza-type", {
    "ns-foreign-message": to_bob(attrs=" xmlns='urn:evil'"),
    "ns-server-namespace-message": to_bob(attrs=" xmlns='jabber:server'"),
    "ns-foreign-iq": b"<iq xmlns='urn:evil' type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    "ns-stream-features-from-client": b"<stream:features/>",
    "ns-stream-prefix-rebound-error": b"<stream:error xmlns:stream='urn:evil'/>",
})  # fmt: skip
add(STREAM_ERRORS, "header", "unsupported-stanza-type", {
    "ns-foreign-before-auth": b"<foo xmlns='urn:example:foo'/>",
})  # fmt: skip
add(STREAM_ERRORS, "tls", "unsupported-stanza-type", {
    "ns-stream-features-before-auth": b"<stream:features/>",
    "ns-sasl-success-from-client": f"<success xmlns='{SASL}'/>".encode(),
    "ns-compress-when-not-enabled-before-auth": (
        b"<compress xmlns='http://jabber.org/protocol/compress'><method>zlib</method></compress>"
    ),
})  # fmt: skip
# A stream header inside the stream is such an element (the stream restarts only after TLS
# and SASL, §4.3.3); refused at once, not when it would close with the stream.
for stage in IN_STREAM_STAGES:
    add(STREAM_ERRORS, stage, "unsupported-stanza-type", {f"second-header-{stage}": OPEN_NO_DECL})
add(STREAM_ERRORS, "bound", "unsupported-stanza-type", {
    "second-header-other-host": OPEN_NO_DECL.replace(b"'localhost'", b"'example.test'"),
})  # fmt: skip

# §4.1, §4.9.3.1 bad-format: the stream's children are elements; text between them other
# than whitespace (§4.6.1 keepalives) is XML the server cannot process.
add(STREAM_ERRORS, "bound", "bad-format", {
    "top-level-text": b"hello",
    "top-level-no-break-space": "\u00a0".encode(),
    "top-level-entity": b"&amp;",
    "top-level-cdata": b"<![CDATA[x]]>",
    "top-level-parameter-entity-reference": b"%pe;",
    "top-level-http-request": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "top-level-zlib-after-login": zlib.compress(to_bob()),
})  # fmt: skip
add(STREAM_ERRORS, "header", "bad-format", {"top-level-text-before-auth": b"hello"})

# Other protocols on the XMPP port: not XML (§4.9.3.13). A TLS ClientHello as the first
# bytes is a XEP-0368 client on the wrong port: closed without a stream error it could not
# read (test_client_hello_first_is_closed_without_a_stream_error).
add(STREAM_ERRORS, "connected", "not-well-formed", {
    "protocol-http-get": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "protocol-http-post-bosh": b"POST /http-bind HTTP/1.1\r\nContent-Type: text/xml\r\n\r\n"
    b"<body rid='1'/>",
    "protocol-ssh-banner": b"SSH-2.0-OpenSSH_9.2\r\n",
})  # fmt: skip
add(STREAM_ERRORS, "bound", "not-well-formed", {
    "protocol-tls-client-hello-after-login": tls_client_hello(),
})  # fmt: skip

# §4.9.3.12 not-authorized: stanzas before authentication and binding (§7.1), and a
# negotiation step the stream is no longer entitled to (SASL after its success).
BIND_IQ = f"<iq type='set' id='b'><bind xmlns='{BIND}'/></iq>".encode()
SESSION_IQ = b"<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
SCRAM_FIRST = "biwsbj1hbGljZSxyPTEyMzQ="  # n,,n=alice,r=1234
SCRAM_AUTH = f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{SCRAM_FIRST}</auth>"


def bind_iq(resource: str) -> bytes:
    bind = f"<bind xmlns='{BIND}'><resource>{resource}</resource></bind>"
    return f"<iq type='set' id='b'>{bind}</iq>".encode()


add(STREAM_ERRORS, "header", "not-authorized", {
    "order-bind-before-tls": BIND_IQ,
    "order-message-before-tls": to_bob(),
})  # fmt: skip
add(STREAM_ERRORS, "tls", "not-authorized", {"order-bind-before-auth": BIND_IQ})
add(STREAM_ERRORS, "auth", "not-authorized", {
    "order-presence-before-bind": b"<presence/>",
    "order-iq-before-bind": b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>",
    "order-session-before-bind": SESSION_IQ,
    "order-bind-get-before-bind": BIND_IQ.replace(b"'set'", b"'get'"),
    "order-sasl-after-auth": SCRAM_AUTH.encode(),
})  # fmt: skip
add(STREAM_ERRORS, "bound", "not-authorized", {"order-sasl-after-bind": SCRAM_AUTH.encode()})

# §8.1.2.1, §4.9.3.9 invalid-from: a client names only itself in 'from'.
add(STREAM_ERRORS, "bound", "invalid-from", {
    "from-bystander": to_bob(attrs=f" from='{CAROL}'"),
    "from-other-domain": to_bob(attrs=" from='alice@example.test'"),
    "from-own-account-other-resource": to_bob(attrs=" from='alice@localhost/not-mine'"),
    "from-the-server": to_bob(attrs=" from='localhost'"),
    "from-malformed": to_bob(attrs=" from='@@'"),
    "from-spoofed-on-iq": f"<iq type='get' id='v' to='{BOB}' from='{CAROL}'>"
    "<query xmlns='jabber:iq:version'/></iq>".encode(),
    "from-spoofed-on-presence": f"<presence to='{BOB}' from='{CAROL}'/>".encode(),
})  # fmt: skip


# --- cases answered with a stanza error; the stream goes on (RFC 6120 §8.3) ---------------

# §8.3.3.1 bad-request: a stanza that breaks the schema (Appendix A.5: an iq has an 'id'
# and one of four types; presence types are enumerated) or §8.2.3's one payload for get and
# set; RFC 6121 §4.7.2.3: a priority is an integer in -128..127. §7.7.2.1 bad-request: a
# resource that cannot be prepared; §7.7.2.2 not-allowed: one resource per stream.
# §8.3.3.8 jid-malformed (RFC 7622 §3: parts of 1..1023 octets once prepared; a localpart
# without " & ' / : < > @ and what PRECIS refuses).
LONG = "x" * 1024
LONG_DOMAIN = "a" * 60 + ("." + "a" * 60) * 17
STANZA_ERRORS: dict[str, Case] = {}
add(STANZA_ERRORS, "bound", "bad-request", {
    "iq-set-without-id": b"<iq type='set'><query xmlns='jabber:iq:roster'/></iq>",
    "iq-without-id-to-bystander": f"<iq type='get' to='{BOB}'>"
    "<query xmlns='jabber:iq:version'/></iq>".encode(),
    "iq-set-zero-payloads": b"<iq type='set' id='z'/>",
    "iq-get-text-payload": b"<iq type='get' id='t'>ping</iq>",
    "iq-set-two-payloads": b"<iq type='set' id='2'><query xmlns='jabber:iq:roster'/>"
    b"<ping xmlns='urn:xmpp:ping'/></iq>",
    "iq-get-two-payloads-to-bystander": f"<iq type='get' id='2' to='{BOB}'>"
    "<a xmlns='urn:a'/><b xmlns='urn:b'/></iq>".encode(),
    "iq-get-zero-payloads-to-bystander": f"<iq type='get' id='0' to='{BOB}'/>".encode(),
    "iq-without-type": b"<iq id='n'><ping xmlns='urn:xmpp:ping'/></iq>",
    "iq-type-empty": b"<iq type='' id='e'><ping xmlns='urn:xmpp:ping'/></iq>",
    "iq-type-uppercase": b"<iq type='GET' id='u'><ping xmlns='urn:xmpp:ping'/></iq>",
    "iq-type-of-message": b"<iq type='chat' id='c'><ping xmlns='urn:xmpp:ping'/></iq>",
    "presence-type-bogus": f"<presence to='{BOB}' type='bogus'/>".encode(),
    "presence-type-empty": f"<presence to='{BOB}' type=''/>".encode(),
    "presence-type-available": f"<presence to='{BOB}' type='available'/>".encode(),
    "presence-priority-not-a-number": b"<presence><priority>high</priority></presence>",
    "presence-priority-out-of-range": b"<presence><priority>200</priority></presence>",
    "session-without-id": SESSION_IQ.replace(b" id='s'", b""),
})  # fmt: skip
add(STANZA_ERRORS, "auth", "bad-request", {
    "bind-without-id": BIND_IQ.replace(b" id='b'", b""),
    "bind-resource-too-long": bind_iq(LONG),
    "bind-resource-with-control": bind_iq("a\u0085b"),
})  # fmt: skip
add(STANZA_ERRORS, "bound", "not-allowed", {"bind-twice": BIND_IQ})
add(STANZA_ERRORS, "bound", "jid-malformed", {
    f"to-{name}": f"<message to='{jid}'><body>x</body></message>".encode()
    for name, jid in {
        "localpart-too-long": f"{LONG}@localhost",
        "localpart-colon": "bo:b@localhost",
        "localpart-quote": "bo&quot;b@localhost",
        "localpart-space": "bo b@localhost",
        "localpart-c1-control": "bo\u0085b@localhost",
        "empty-localpart": "@localhost",
        "empty-domain": "bob@",
        "empty-resource": "bob@localhost/",
        "empty": "",
        "two-at-signs": "a@b@localhost",
        "domain-with-space": "bob@local host",
        "domain-too-long": f"bob@{LONG_DOMAIN}",
        "resource-too-long": f"bob@localhost/{LONG}",
    }.items()
})  # fmt: skip
add(STANZA_ERRORS, "bound", "jid-malformed", {
    "iq-to-malformed": b"<iq type='get' id='j' to='@localhost'>"
    b"<query xmlns='jabber:iq:version'/></iq>",
    "presence-subscribe-to-malformed": b"<presence type='subscribe' to='bob@'/>",
})  # fmt: skip

# RFC 6120 §6.5 SASL failures; the stream stays open for another attempt (§6.4.5).
# §6.5.6 encryption-required (TLS is mandatory-to-negotiate here, §5.3.1); §6.5.5
# invalid-mechanism (RFC 4422 §3.1: names are upper case); §6.5.2 incorrect-encoding
# (§6.4.2: base 64 of RFC 4648 §4); §6.5.8 malformed-request (data that breaks the
# mechanism's syntax, or a response outside an exchange).
SASL_FAILURES: dict[str, Case] = {}
add(SASL_FAILURES, "header", "encryption-required", {"scram-before-tls": SCRAM_AUTH.encode()})
add(SASL_FAILURES, "tls", "invalid-mechanism", {
    "unknown-mechanism": f"<auth xmlns='{SASL}' mechanism='X-EVIL'/>".encode(),
    "empty-mechanism": f"<auth xmlns='{SASL}' mechanism=''/>".encode(),
    "missing-mechanism": f"<auth xmlns='{SASL}'>AGFsaWNlAHg=</auth>".encode(),
    "lowercase-mechanism": f"<auth xmlns='{SASL}' mechanism='plain'>AGFsaWNlAHg=</auth>".encode(),
})  # fmt: skip
add(SASL_FAILURES, "tls", "incorrect-encoding", {
    f"base64-{name}": f"<auth xmlns='{SASL}' mechanism='PLAIN'>{text}</auth>".encode()
    for name, text in {
        "bad-character": "Zm9v!",
        "padding-inside": "Zm9=v",
        "bad-length": "Z",
        "only-padding": "====",
        "missing-padding": "Zm9vYg",
    }.items()
})  # fmt: skip
add(SASL_FAILURES, "tls", "malformed-request", {
    "plain-without-separators": f"<auth xmlns='{SASL}' mechanism='PLAIN'>YWxpY2U=</auth>".encode(),
    "scram-garbage-first-message": SCRAM_AUTH.replace(SCRAM_FIRST, "Z2FyYmFnZQ==").encode(),
    "response-without-exchange": f"<response xmlns='{SASL}'>Zm9v</response>".encode(),
})  # fmt: skip


# --- well-formed input the RFCs accept, however odd ----------------------------------------

# Delivered to bob unchanged. RFC 6121 §5.2.2: an unknown message type is "normal".
# Namespaces in XML: a prefix may be bound anew inside a stanza, 'stream' too. RFC 6120
# §8.1.5: xml:lang is the sender's, passed on as it is. XML 1.0 §2.2: DEL, C1 controls and
# U+10FFFF are characters. §8.1.2.1: the client's bare JID is its own address too (the
# server stamps the full JID). §4.6.1: whitespace between stanzas, however much, is no
# stanza to buffer against the size limit.
DELIVERED: dict[str, tuple[bytes, Callable[[Any], bool]]] = {
    # At the limits, not beyond: 64 attributes and declarations, MAX_ELEMENTS elements.
    "limit-attributes-and-declarations-at-the-limit": (
        to_bob(b"<x" + HALF_AND_HALF[: -len(b" a32='1' xmlns:p32='urn:x'")] + b"/>"),
        lambda el: len(el.find(f"{{{CLIENT}}}x").attrib) == 32,
    ),
    "limit-elements-at-the-limit": (
        to_bob(b"<x>" + b"<a/>" * (MAX_ELEMENTS - 2) + b"</x>"),
        lambda el: len(el.find(f"{{{CLIENT}}}x")) == MAX_ELEMENTS - 2,
    ),
    "message-type-bogus": (to_bob(attrs=" type='bogus'"), lambda el: el.get("type") == "bogus"),
    "message-type-empty": (to_bob(attrs=" type=''"), lambda el: el.get("type") == ""),
    "stream-prefix-rebound-in-payload": (
        to_bob(b"<stream:error xmlns:stream='urn:evil'/><body>x</body>"),
        lambda el: el.find("{urn:evil}error") is not None,
    ),
    "stream-prefix-declared-on-stanza": (
        to_bob(b"<stream:x/><body>x</body>", attrs=" xmlns:stream='urn:evil'"),
        lambda el: el.find("{urn:evil}x") is not None,
    ),
    "content-namespace-declared-on-stanza": (
        to_bob(attrs=" xmlns='jabber:client'"),
        lambda el: el.findtext(f"{{{CLIENT}}}body") == "hi",
    ),
    "xml-prefix-declared-explicitly": (
        to_bob(attrs=" xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='fr'"),
        lambda el: el.get(XML_LANG) == "fr",
    ),
    "xml-lang-empty": (to_bob(attrs=" xml:lang=''"), lambda el: el.get(XML_LANG) == ""),
    "xml-lang-not-a-language-tag": (
        to_bob(attrs=" xml:lang='!!-not-a-tag'"),
        lambda el: el.get(XML_LANG) == "!!-not-a-tag",
    ),
    "del-and-c1-controls": (
        body("a\x7fb\u0085c".encode()),
        lambda el: el.findtext(f"{{{CLIENT}}}body") == "a\x7fb\u0085c",
    ),
    "charref-u10ffff": (
        body(b"&#x10FFFF;"),
        lambda el: el.findtext(f"{{{CLIENT}}}body") == "\U0010ffff",
    ),
    "parameter-entity-reference-as-text": (
        body(b"%pe;"),
        lambda el: el.findtext(f"{{{CLIENT}}}body") == "%pe;",
    ),
    "cdata-section": (
        body(b"<![CDATA[<b>&amp;</b>]]>"),
        lambda el: el.findtext(f"{{{CLIENT}}}body") == "<b>&amp;</b>",
    ),
    "from-own-bare-jid": (
        to_bob(attrs=" from='alice@localhost'"),
        lambda el: el.get("from", "").startswith("alice@localhost/"),
    ),
    "whitespace-keepalives": (
        b" \t\r\n" * 75_000 + to_bob(),
        lambda el: el.findtext(f"{{{CLIENT}}}body") == "hi",
    ),
}

# Never answered. RFC 6120 §8.2.3: a result or error gets no result or error back, whatever
# it carries; §8.3.1: no error in reply to an error.
SILENT = {
    "iq-result-with-payload": b"<iq type='result' id='r1'><query xmlns='jabber:iq:version'/></iq>",
    "iq-result-with-two-payloads": b"<iq type='result' id='r2'><a xmlns='urn:a'/>"
    b"<b xmlns='urn:b'/></iq>",
    "iq-result-without-id": b"<iq type='result'/>",
    "iq-error-without-error-element": b"<iq type='error' id='e1'/>",
    "iq-error-with-payload-and-no-id": b"<iq type='error'><ping xmlns='urn:xmpp:ping'/></iq>",
}  # fmt: skip

# Stream headers answered with features. RFC 6120 §4.7.5: a higher version gets the
# server's own (1.0); §4.7.4: a language the server does not take leaves its default;
# §4.7.1: a malformed 'from' is not echoed as 'to'.
ACCEPTED_HEADERS: dict[str, tuple[bytes, dict[str, str | None]]] = {
    "version-2.0": (header(STD_ATTRS.replace("'1.0'", "'2.0'")), {"version": "1.0"}),
    "lang-empty": (header(STD_ATTRS + " xml:lang=''"), {XML_LANG: "en"}),
    "lang-too-long": (header(STD_ATTRS + f" xml:lang='{'x' * 100}'"), {XML_LANG: "en"}),
    "lang-with-quotes": (header(STD_ATTRS + " xml:lang='e&quot;n&apos;'"), {XML_LANG: "e\"n'"}),
    "from-malformed": (header(STD_ATTRS + " from='@@'"), {"to": None}),
    "encoding-lowercase-utf8": (
        OPEN.replace(b"'1.0'?>", b"'1.0' encoding='utf-8'?>"),
        {"from": "localhost"},
    ),
}


# --- fixtures and helpers ---------------------------------------------------------------------


class Bystanders:
    """bob and carol, logged in for the whole module: every case ends with a message each
    way between them, which must be the first thing each receives."""

    def __init__(self, server: ServerProcess, ca_file: str) -> None:
        self.server = server
        self.ca_file = ca_file
        self.count = itertools.count()
        self.login()

    def login(self) -> None:
        self.bob = self.server.client()
        self.carol = self.server.client()
        assert self.bob.login(self.ca_file, "bob", PASSWORD, "by") == BOB
        assert self.carol.login(self.ca_file, "carol", PASSWORD, "by") == CAROL
        self.verified = True

    def exchange(self, sender: RawClient, receiver: RawClient, to: str, frm: str) -> None:
        tag = f"mark-{next(self.count)}"
        sender.send(f"<message to='{to}' id='{tag}' type='chat'><body>{tag}</body></message>")
        got = receiver.next()
        assert got.tag == f"{{{CLIENT}}}message", got
        assert got.get("id") == tag and got.get("from") == frm, dict(got.attrib)

    def assert_unaffected(self) -> None:
        assert self.server.alive(), self.server.log_text()[-3000:]
        self.exchange(self.carol, self.bob, BOB, CAROL)
        self.exchange(self.bob, self.carol, CAROL, BOB)
        self.verified = True

    def close(self) -> None:
        self.bob.close()
        self.carol.close()


@pytest.fixture(scope="module")
def bystanders(server: ServerProcess, ca_file: str) -> Iterator[Bystanders]:
    pair = Bystanders(server, ca_file)
    yield pair
    pair.close()


@pytest.fixture
def others(bystanders: Bystanders) -> Bystanders:
    """The pair, logged in anew only after a case that failed to show them unaffected (it
    has failed already; later cases need not fail for it again)."""
    if not bystanders.verified:
        bystanders.close()
        bystanders.login()
    bystanders.verified = False
    return bystanders


def expect_new_stream(c: RawClient) -> None:
    """The server waits for a new stream header (after TLS or SASL, RFC 6120 §4.3.3)."""
    c._new_parser()
    c.header = None


def reach(server: ServerProcess, ca_file: str, stage: str) -> RawClient:
    """A hostile client (alice) at a stage of its stream."""
    assert stage in STAGES
    c = RawClient(server.port, timeout=5)
    if stage == "connected":
        return c
    c.open_stream()
    if stage == "header":
        return c
    if stage == "tls-prolog":
        c.send(f"<starttls xmlns='{TLS}'/>")
        assert c.next().tag == f"{{{TLS}}}proceed"
        context = ssl.create_default_context(cafile=ca_file)
        c.sock = context.wrap_socket(c.sock, server_hostname="localhost")
        expect_new_stream(c)
        return c
    c.starttls(ca_file)
    if stage == "tls":
        return c
    assert c.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    if stage == "auth-prolog":
        expect_new_stream(c)
        return c
    c.open_stream()
    if stage == "auth":
        return c
    c.bind()
    return c


def assert_ping_answered_first(c: RawClient) -> None:
    """Nothing came back for what was sent before: the first answer is to this ping."""
    c.send("<iq type='get' id='marker'><ping xmlns='urn:xmpp:ping'/></iq>")
    reply = c.next()
    assert reply.get("id") == "marker" and reply.get("type") == "result", dict(reply.attrib)


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(STREAM_ERRORS))
def test_stream_error(server: ServerProcess, ca_file: str, others: Bystanders, case: str) -> None:
    stage, data, condition = STREAM_ERRORS[case]
    c = reach(server, ca_file, stage)
    try:
        c.send(data)
        assert c.stream_error() == condition
        assert c.wait_closed()
        # §4.9.1.2: even an error before any header of ours follows one.
        assert c.header is not None and c.header.tag == f"{{{STREAMS}}}stream"
    finally:
        c.abort()
    others.assert_unaffected()


def test_client_hello_first_is_closed_without_a_stream_error(
    server: ServerProcess, others: Bystanders
) -> None:
    c = RawClient(server.port, timeout=5)
    try:
        c.send(tls_client_hello())
        assert c.wait_closed()
        assert c.header is None and not c.queue  # no XML at all: a TLS client reads none
    finally:
        c.abort()
    server.wait_for_log(f"TLS handshake on STARTTLS port {server.port}")
    others.assert_unaffected()


@pytest.mark.parametrize("case", sorted(STANZA_ERRORS))
def test_stanza_error(server: ServerProcess, ca_file: str, others: Bystanders, case: str) -> None:
    stage, data, condition = STANZA_ERRORS[case]
    c = reach(server, ca_file, stage)
    try:
        c.send(data)
        reply = c.next()
        assert reply.get("type") == "error", dict(reply.attrib)
        assert stanza_error(reply) == condition
        if stage == "bound":
            assert_ping_answered_first(c)  # the stream goes on
    finally:
        c.close()
    others.assert_unaffected()


@pytest.mark.parametrize("case", sorted(SASL_FAILURES))
def test_sasl_failure(server: ServerProcess, ca_file: str, others: Bystanders, case: str) -> None:
    stage, data, condition = SASL_FAILURES[case]
    c = reach(server, ca_file, stage)
    try:
        c.send(data)
        failure = c.next()
        assert failure.tag == f"{{{SASL}}}failure"
        conditions = [child.tag for child in failure if not child.tag.endswith("}text")]
        assert conditions == [f"{{{SASL}}}{condition}"]
        if stage == "tls":
            # The stream goes on: a correct login still succeeds on it.
            assert c.sasl_scram("alice", PASSWORD).tag == f"{{{SASL}}}success"
    finally:
        c.close()
    others.assert_unaffected()


def test_sasl_response_with_bad_base64(
    server: ServerProcess, ca_file: str, others: Bystanders
) -> None:
    c = reach(server, ca_file, "tls")
    try:
        c.send(SCRAM_AUTH)
        assert c.next().tag == f"{{{SASL}}}challenge"
        c.send(f"<response xmlns='{SASL}'>not*base64</response>")
        failure = c.next()
        assert failure.find(f"{{{SASL}}}incorrect-encoding") is not None
    finally:
        c.close()
    others.assert_unaffected()


# RFC 6120 §5.4.2.2: STARTTLS where it was not offered (after TLS, after SASL) is the
# failure case: <failure/> in the TLS namespace, then the stream is closed (no stream error).
@pytest.mark.parametrize("stage", ["tls", "auth", "bound"])
def test_starttls_not_offered(
    server: ServerProcess, ca_file: str, others: Bystanders, stage: str
) -> None:
    c = reach(server, ca_file, stage)
    try:
        c.send(f"<starttls xmlns='{TLS}'/>")
        assert c.next().tag == f"{{{TLS}}}failure"
        assert c.wait_closed() and c.closed_stream and not c.queue
    finally:
        c.abort()
    others.assert_unaffected()


# RFC 6120 §4.9.1.1: a stream error is unrecoverable; the server ends its stream with its
# closing tag (§4.4) and does not answer the client's error with one of its own.
@pytest.mark.parametrize("stage", ["header", "bound"])
def test_client_stream_error_closes(
    server: ServerProcess, ca_file: str, others: Bystanders, stage: str
) -> None:
    c = reach(server, ca_file, stage)
    try:
        c.send(
            "<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
            "</stream:error>"
        )
        assert c.wait_closed() and c.closed_stream and not c.queue
    finally:
        c.abort()
    others.assert_unaffected()


@pytest.mark.parametrize("case", sorted(DELIVERED))
def test_delivered(server: ServerProcess, ca_file: str, others: Bystanders, case: str) -> None:
    data, check = DELIVERED[case]
    c = reach(server, ca_file, "bound")
    try:
        c.send(data)
        got = others.bob.next()
        assert got.tag == f"{{{CLIENT}}}message" and check(got), dict(got.attrib)
        assert_ping_answered_first(c)
    finally:
        c.close()
    others.assert_unaffected()


def test_utf8_sequence_split_across_reads(
    server: ServerProcess, ca_file: str, others: Bystanders
) -> None:
    # TCP may cut a character anywhere; §4.9.3.22 is about the bytes, not the reads.
    data = body("\U0001f600".encode())
    cut = data.index(b"\xf0") + 2
    c = reach(server, ca_file, "bound")
    try:
        c.send(data[:cut])
        time.sleep(0.05)
        c.send(data[cut:])
        assert others.bob.next().findtext(f"{{{CLIENT}}}body") == "\U0001f600"
    finally:
        c.close()
    others.assert_unaffected()


@pytest.mark.parametrize("case", sorted(SILENT))
def test_silently_dropped(
    server: ServerProcess, ca_file: str, others: Bystanders, case: str
) -> None:
    c = reach(server, ca_file, "bound")
    try:
        c.send(SILENT[case])
        assert_ping_answered_first(c)
    finally:
        c.close()
    others.assert_unaffected()


@pytest.mark.parametrize("case", sorted(ACCEPTED_HEADERS))
def test_accepted_header(
    server: ServerProcess, ca_file: str, others: Bystanders, case: str
) -> None:
    data, expected = ACCEPTED_HEADERS[case]
    c = RawClient(server.port, timeout=5)
    try:
        c.send(data)
        answer = c.wait_header()
        assert c.next().tag == f"{{{STREAMS}}}features"
        assert {key: answer.get(key) for key in expected} == expected
    finally:
        c.close()
    others.assert_unaffected()
