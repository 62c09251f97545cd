"""The byte-level stanza edits of the compiled router (_router.pyx): `archive_copies`, the
message archive's one-pass making of the delivered and the archived copy, gives byte for
byte what the general edits give piece by piece, or None where it must leave it to them."""

from __future__ import annotations

from typing import Any

import pytest
from fastxmpp._parser import Stanza, StreamParser
from fastxmpp._router import append_child, archive_copies, forwardable
from lxml import etree

HEADER = (
    b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
    b" xmlns:rooted='urn:example:rooted' to='localhost' version='1.0'>"
)
SENDER = "alice@localhost/phone"
RECIPIENT = "bob@localhost"
SID = b"<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='0000000000000001'/>"


def parsed(xml: bytes) -> Stanza:
    parser = StreamParser()
    events = parser.feed(HEADER + xml)
    stanzas = [e for e in events if type(e) is Stanza]
    assert len(stanzas) == 1, events
    return stanzas[0]


def piece_by_piece(st: Stanza, sender: str) -> tuple[bytes, bytes]:
    changes = {"from": sender}
    if "to" not in st.attrs:
        changes["to"] = RECIPIENT
    return append_child(st.with_attrs(changes), SID), forwardable(st, sender, RECIPIENT)


@pytest.mark.parametrize(
    "xml",
    [
        b"<message to='bob@localhost' type='chat' id='a1'><body>hi</body></message>",
        b"<message type='chat'><body>no 'to': the bare JID goes in</body></message>",
        b"<message to='bob@localhost' xmlns='jabber:client'><body>declared</body></message>",
        b'<message to="bob@localhost"  xml:lang="de" ><body>Gr\xc3\xbc\xc3\x9fe &amp; '
        b"&lt;tags&gt;</body><active xmlns='http://jabber.org/protocol/chatstates'/>"
        b"<x:y xmlns:x='urn:example'><x:z>&lt;/message&gt;</x:z></x:y></message>",
        b"<message to='bob@localhost'><body><![CDATA[</body> in CDATA]]></body>"
        b"<request xmlns='urn:xmpp:receipts'/></message>",
    ],
)
def test_in_one_pass_as_piece_by_piece(xml: bytes) -> None:
    st = parsed(xml)
    to = None if "to" in st.attrs else RECIPIENT
    copies = archive_copies(st, SENDER, to, SID)
    assert copies is not None
    assert copies == piece_by_piece(st, SENDER)
    delivered, archived = (etree.fromstring(copy) for copy in copies)
    for el in (delivered, archived):
        assert el.get("from") == SENDER and el.get("to") == RECIPIENT
    assert archived.tag == "{jabber:client}message"
    assert delivered[-1].tag == "{urn:xmpp:sid:0}stanza-id"
    # (the delivered copy inherits jabber:client from its stream: compare local names)
    assert [etree.QName(c).localname for c in delivered][:-1] == [
        etree.QName(c).localname for c in archived
    ]


@pytest.mark.parametrize(
    ("xml", "sender"),
    [
        (b"<message to='bob@localhost'/>", SENDER),  # empty: nowhere to put a child in place
        (b"<message to='bob@localhost' from='alice@localhost'><body>x</body></message>", SENDER),
        (b"<message to='bob@localhost'><body>x</body></message>", 'alice@localhost/"q"&a'),
        (b"<message to='bob@localhost'><rooted:x/><body>x</body></message>", SENDER),
    ],
    ids=["empty", "from-given", "escaped-sender", "prefix-of-the-stream-root"],
)
def test_the_general_path_is_left_to_the_general_edits(xml: bytes, sender: str) -> None:
    st = parsed(xml)
    to = None if "to" in st.attrs else RECIPIENT
    assert archive_copies(st, sender, to, SID) is None
    delivered, archived = piece_by_piece(st, sender)  # which still make both
    for copy in (delivered, archived):
        el: Any = etree.fromstring(copy)
        assert el.get("from") == sender
    # Well-formed in jabber:client, also when written anew (a prefix of the stream root:
    # that copy declares its namespaces itself, and once had a second xmlns).
    assert etree.fromstring(archived).tag == "{jabber:client}message"
