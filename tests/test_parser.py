"""The compiled stream parser on its own: events, raw bytes, restricted XML, limits."""

from __future__ import annotations

import pytest
from fastxmpp._parser import STREAM_END, Stanza, StreamHeader, StreamParser, XMLStreamError
from lxml import etree

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0' "
    b"xml:lang='en'>"
)
STANZAS = [
    b"<message to='juliet@example.com/balcony' type='chat' id='m1' xml:lang='en'>"
    + "<body>Wherefore art thou, Romeo? \u00e9\u20ac\U0001f600</body>".encode()
    + b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    b"<presence/>",
    b"<presence><show>away</show><status>a &lt;b&gt; &amp; c</status>"
    b"<priority>5</priority></presence>",
    b"<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>",
    b"<iq type='set' id='x'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
    b"<publish node='n'><item><e:entry xmlns:e='urn:e' e:a='1'><![CDATA[x<y]]></e:entry>"
    b"</item></publish></pubsub></iq>",
]
STREAM = HEADER + b"\n  ".join(STANZAS) + b" </stream:stream>"


def summary(events: list[object]) -> list[object]:
    out: list[object] = []
    for ev in events:
        if isinstance(ev, Stanza):
            out.append(("stanza", ev.name, ev.ns, ev.raw, tuple(ev.children)))
        elif isinstance(ev, StreamHeader):
            out.append(("header", ev.name, ev.ns, tuple(sorted(ev.attrs.items()))))
        elif isinstance(ev, XMLStreamError):
            out.append(("error", ev.condition))
        else:
            out.append(ev)
    return out


def test_events_and_raw_bytes() -> None:
    events = StreamParser().feed(STREAM)
    assert isinstance(events[0], StreamHeader)
    assert events[0].attrs["to"] == "localhost"
    assert ("stream", "http://etherx.jabber.org/streams") in events[0].nsdecls
    stanzas = events[1:-1]
    assert [s.raw for s in stanzas] == STANZAS
    assert events[-1] is STREAM_END
    message = stanzas[0]
    assert message.name == "message" and message.ns == "jabber:client"
    assert message.attrs["type"] == "chat"
    assert message.attrs["{http://www.w3.org/XML/1998/namespace}lang"] == "en"
    assert message.children == [
        ("jabber:client", "body"),
        ("http://jabber.org/protocol/chatstates", "active"),
    ]
    assert stanzas[1].empty and not message.empty


@pytest.mark.parametrize("split", range(len(STREAM)))
def test_split_anywhere_gives_identical_events(split: int) -> None:
    # Every byte position, including the middle of multi-byte UTF-8 sequences.
    whole = summary(StreamParser().feed(STREAM))
    parser = StreamParser()
    pieces = parser.feed(STREAM[:split]) + parser.feed(STREAM[split:])
    assert summary(pieces) == whole


def test_byte_by_byte() -> None:
    parser = StreamParser()
    events: list[object] = []
    for i in range(len(STREAM)):
        events += parser.feed(STREAM[i : i + 1])
    assert summary(events) == summary(StreamParser().feed(STREAM))
    assert parser.buffered == 0


def test_element_is_built_on_demand_in_stream_namespace() -> None:
    st = StreamParser().feed(STREAM)[3]
    el = st.element()
    assert el.tag == "{jabber:client}presence"
    assert el.findtext("{jabber:client}status") == "a <b> & c"


def test_with_attrs_rewrites_only_the_outer_tag() -> None:
    st = StreamParser().feed(STREAM)[1]
    out = st.with_attrs({"from": "romeo@example.net/orchard", "to": None})
    assert out.endswith(STANZAS[0][STANZAS[0].index(b"><body>") + 1 :])
    el = etree.fromstring(b"<w xmlns='jabber:client'>" + out + b"</w>")[0]
    assert el.get("from") == "romeo@example.net/orchard"
    assert el.get("to") is None
    assert el.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    assert el.findtext("{jabber:client}body") == "Wherefore art thou, Romeo? \u00e9\u20ac\U0001f600"


def test_with_attrs_escapes_values() -> None:
    st = StreamParser().feed(HEADER + b"<presence/>")[1]
    out = st.with_attrs({"from": "a\"<&>'\n\tb"})
    el = etree.fromstring(b"<w xmlns='jabber:client'>" + out + b"</w>")[0]
    assert el.get("from") == "a\"<&>'\n\tb"


@pytest.mark.parametrize(
    "stanza",
    [
        b"<message to='a@b' type=\"chat\"  ><body>x &amp; y</body></message>",
        b"<presence/>",
        b"<presence  type='probe' />",
        b"<iq xmlns='jabber:client' id='1' type='get'><q xmlns='urn:q'/></iq>",
    ],
)
def test_adding_attributes_keeps_every_received_byte(stanza: bytes) -> None:
    # No changed attribute is present yet: the new ones are spliced into the start tag.
    st = StreamParser().feed(HEADER + stanza)[1]
    out = st.with_attrs({"from": 'c@d/e"&', "id2": "z"})
    cut = st.start_len - (2 if st.empty else 1)
    assert out.startswith(stanza[:cut]) and out.endswith(stanza[cut:])
    el = etree.fromstring(b"<w xmlns='jabber:client'>" + out + b"</w>")[0]
    assert el.get("from") == 'c@d/e"&' and el.get("id2") == "z"
    original = etree.fromstring(b"<w xmlns='jabber:client'>" + stanza + b"</w>")[0]
    assert dict(original.attrib) == {k: v for k, v in el.attrib.items() if k not in ("from", "id2")}


def test_stream_level_prefix_inside_stanza_is_reserialized() -> None:
    data = HEADER.replace(b"to=", b"xmlns:x='urn:x' to=") + (
        b"<message to='a@b'><x:data/></message>"
    )
    st = StreamParser().feed(data)[1]
    assert st.needs_reserialize
    out = st.with_attrs({"from": "c@d/e"})
    el = etree.fromstring(out)  # must stand on its own: the prefix is declared inside
    assert el.find("{urn:x}data") is not None
    assert el.get("from") == "c@d/e"


def test_prefix_declared_inside_stanza_is_not_reserialized() -> None:
    st = StreamParser().feed(STREAM)[5]
    assert not st.needs_reserialize


def first_error(data: bytes, **limits: int) -> str | None:
    events = StreamParser(**limits).feed(data)
    errors = [e for e in events if isinstance(e, XMLStreamError)]
    return errors[0].condition if errors else None


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (b"<message><!-- hi --></message>", "restricted-xml"),
        (b"<message><?php x?></message>", "restricted-xml"),
        (b"<message>&custom;</message>", "restricted-xml"),
        (b"<message><body>&#0;</body></message>", "not-well-formed"),
        (b"<message><body></message>", "not-well-formed"),
        (b"<message><a:b/></message>", "not-well-formed"),
        # RFC 6120 §4.9.3.22: bytes that break the rules of UTF-8.
        (b"<message \xff='1'/>", "unsupported-encoding"),
        (b"<message><body>\xc3</body></message>", "unsupported-encoding"),
        (b"<message a='1' a='2'/>", "not-well-formed"),
    ],
)
def test_bad_input_inside_stream(payload: bytes, condition: str) -> None:
    assert first_error(HEADER + payload) == condition


def test_doctype_and_entities_are_restricted() -> None:
    laughs = (
        b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
        b"<!ENTITY lol2 '&lol;&lol;&lol;'>]><stream:stream/>"
    )
    assert first_error(laughs) == "restricted-xml"
    external = b"<!DOCTYPE s SYSTEM 'file:///etc/passwd'><stream:stream/>"
    assert first_error(external) == "restricted-xml"


def test_non_utf8_declaration() -> None:
    data = b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream/>"
    assert first_error(data) == "unsupported-encoding"


def test_stanza_size_limit() -> None:
    big = b"<message><body>" + b"x" * 5000 + b"</body></message>"
    assert first_error(HEADER + big, max_stanza_size=4096) == "policy-violation"
    # The same limit holds when the stanza arrives in pieces and never completes.
    parser = StreamParser(max_stanza_size=4096)
    parser.feed(HEADER)
    errors: list[str] = []
    for i in range(0, 6000, 100):
        events = parser.feed(b"<message><body>" if i == 0 else b"y" * 100)
        errors += [e.condition for e in events if isinstance(e, XMLStreamError)]
        if errors:
            break
    assert errors == ["policy-violation"]
    assert parser.failed and parser.buffered == 0


def test_depth_and_attribute_limits() -> None:
    deep = b"<message>" + b"<a>" * 20 + b"</a>" * 20 + b"</message>"
    assert first_error(HEADER + deep, max_depth=10) == "policy-violation"
    assert first_error(HEADER + deep, max_depth=64) is None
    attrs = b" ".join(b"a%d='1'" % i for i in range(70))
    assert first_error(HEADER + b"<message " + attrs + b"/>", max_attributes=64) == (
        "policy-violation"
    )


def test_no_stanza_completes_after_a_limit_error() -> None:
    # expat ends an empty element in the same step as it starts it, also when the start
    # handler has stopped the parser: the cut stanza used to come out before the error.
    attrs = b" ".join(b"a%d='1'" % i for i in range(70))
    events = StreamParser(max_attributes=64).feed(
        HEADER + b"<message><x " + attrs + b"/></message>"
    )
    assert [type(e) for e in events] == [StreamHeader, XMLStreamError]
    deep = b"<message>" + b"<a>" * 8 + b"<b/>" + b"</a>" * 8 + b"</message>"
    events = StreamParser(max_depth=10).feed(HEADER + deep)
    assert [type(e) for e in events] == [StreamHeader, XMLStreamError]


def test_whitespace_keepalives_do_not_accumulate() -> None:
    parser = StreamParser(max_stanza_size=1024)
    parser.feed(HEADER)
    for _ in range(5000):
        assert parser.feed(b" ") == []
    assert parser.buffered <= 1


def test_reset_starts_a_new_stream() -> None:
    parser = StreamParser()
    parser.feed(HEADER + b"<presence/>")
    parser.reset()
    events = parser.feed(HEADER + b"<presence/>")
    assert isinstance(events[0], StreamHeader) and isinstance(events[1], Stanza)


def test_failed_parser_stays_failed() -> None:
    parser = StreamParser()
    assert isinstance(parser.feed(HEADER + b"<a><b></a>")[-1], XMLStreamError)
    again = parser.feed(b"<presence/>")
    assert len(again) == 1 and isinstance(again[0], XMLStreamError)


@pytest.mark.parametrize("content_ns", ["jabber:server", "jabber:component:accept"])
def test_a_peer_stanzas_own_children_are_listed_in_jabber_client(content_ns: str) -> None:
    # RFC 6120 gives jabber:server stanzas the schema of jabber:client ones (and XEP-0114
    # jabber:component:accept): modules look for (jabber:client, "body") in any message.
    parser = StreamParser()
    events = parser.feed(
        f"<stream:stream xmlns='{content_ns}' xmlns:stream='http://etherx.jabber.org/streams'"
        " to='example.org' version='1.0'><message to='a@example.org'><body>hi</body>"
        "<x xmlns='urn:example:x'/><thread>t</thread></message>".encode()
    )
    (st,) = [e for e in events if type(e) is Stanza]
    assert st.ns == content_ns  # the stanza itself keeps its stream's namespace
    assert st.children == [
        ("jabber:client", "body"),
        ("urn:example:x", "x"),
        ("jabber:client", "thread"),
    ]
