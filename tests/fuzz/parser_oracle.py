"""The differential oracle for the stream parser: one fuzz input is checked against a reference
parse by a second XML library (libxml2 through lxml), so that a silent mis-parse is a finding
and not only a crash.

`check(data)` raises `Mismatch` when fastxmpp's `StreamParser` and the reference disagree on
a stream made of a fixed header, `data`, and the closing tag:

- both accept: the same top-level stanzas, with the same name, namespace, attributes and
  canonical (C14N) content, also when the bytes arrive split in two at any position;
- fastxmpp refuses: the reference must refuse too, unless fastxmpp's reason is one XMPP adds
  to XML (restricted-xml, policy-violation limits, unsupported-encoding; RFC 6120 §11; text
  between stanzas, bad-format; a stream header inside the stream, unsupported-stanza-type);
- the reference refuses: fastxmpp must refuse too, or still be waiting for the end of the
  stream (the data left an element or a CDATA section open, so the closing tag is content);
- the stream ends inside the data: what follows the closing tag is never read (RFC 6120
  §4.4), so neither parser's opinion of it counts (libxml2 even stops reporting content
  after the root once it has logged a namespace error).
"""

from __future__ import annotations

from typing import Any

from fastxmpp._parser import Stanza, StreamParser, XMLStreamError
from lxml import etree

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>"
)
FOOTER = b"</stream:stream>"
# Reasons XMPP adds to XML's well-formedness: the reference has no opinion on these.
XMPP_ONLY = {
    "restricted-xml",
    "policy-violation",
    "unsupported-encoding",
    "bad-format",
    "unsupported-stanza-type",
}
# libxml2 refusals that XML 1.0 + Namespaces do not ask for: the namespace name must be a
# "URI reference", which a conforming processor need not verify (expat does not).
LIBXML2_ONLY = {"WAR_NS_URI", "WAR_NS_URI_RELATIVE"}


class Mismatch(AssertionError):
    pass


def _ours(chunks: list[bytes]) -> tuple[list[Stanza], str | None]:
    """The stanzas and the error condition; "incomplete" when the stream has not ended: a
    streaming parser waits for more bytes where a document parser sees a premature end.
    An error in the bytes after the stream's closing tag is none (see the module doc)."""
    parser = StreamParser(1 << 20, 256, 256)
    stanzas: list[Stanza] = []
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, XMLStreamError):
                return stanzas, None if parser.ended else event.condition
            if isinstance(event, Stanza):
                stanzas.append(event)
    return stanzas, None if parser.ended else "incomplete"


def _reference(document: bytes) -> list[Any] | None:
    """libxml2's top-level children, or None when it finds the document not well-formed.
    Parsed in recover mode so that every problem is logged, then judged from the log."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, recover=True)
    try:
        root = etree.fromstring(document, parser)
    except etree.XMLSyntaxError:
        return None
    problems = [
        e for e in parser.error_log if e.level >= etree.ErrorLevels.ERROR
        and e.type_name not in LIBXML2_ONLY
    ]  # fmt: skip
    if problems or root is None:
        return None
    return list(root)


def _canonical(element: Any) -> tuple[Any, ...]:
    """The element's information set as a comparable value: names, attributes, character
    data and children in order (not C14N, which refuses relative namespace names)."""
    children = tuple(_canonical(c) for c in element if isinstance(c.tag, str))
    tails = tuple(c.tail or "" for c in element)
    return (element.tag, tuple(sorted(element.attrib.items())), element.text or "", children,
            "".join(tails))  # fmt: skip


def _non_ascii_names(elements: list[Any]) -> bool:
    """Whether an element, attribute, namespace prefix or processing instruction target name
    has a non-ASCII character. expat follows the name character classes of XML 1.0 4th
    edition, libxml2 the wider ones of the 5th (e.g. U+01CC is a name character only in the
    5th): a known difference, not a mis-parse. XMPP's own names are ASCII."""
    for top in elements:
        for el in top.iter():
            if isinstance(el, etree._ProcessingInstruction):
                names = [el.target]
            elif isinstance(el.tag, str):
                names = [el.tag.rsplit("}", 1)[-1], *(a.rsplit("}", 1)[-1] for a in el.attrib)]
                names += [prefix for prefix in el.nsmap if prefix]
            else:
                continue
            if any(not name.isascii() for name in names):
                return True
    return False


def _describe(st: Stanza) -> tuple[Any, ...]:
    element = st.element()
    # items(), not dict(attrib): lxml cannot look an attribute up by a "{namespace}name" key
    # whose namespace holds a "}" (found by tests/fuzz), though it lists it
    return (element.tag, dict(element.attrib.items()), _canonical(element))


def check(data: bytes) -> None:
    whole = HEADER + data + FOOTER
    ours, error = _ours([whole])
    reference = _reference(whole)
    if reference is None:
        if error is None:
            if _ours([HEADER + data])[1] is None:
                return  # the stream ended inside the data: see the module doc
            raise Mismatch(f"fastxmpp accepted what libxml2 refuses: {whole!r}")
        return
    names_differ = _non_ascii_names(reference)
    # libxml2 keeps comments and PIs as children; XMPP forbids them (restricted-xml).
    reference = [el for el in reference if isinstance(el.tag, str)]
    if error is not None:
        if error == "not-well-formed" and names_differ:
            return  # XML 1.0 4th (expat) vs 5th (libxml2) edition name characters: see below
        if error not in XMPP_ONLY:
            raise Mismatch(f"fastxmpp refused ({error}) what libxml2 accepts: {whole!r}")
        return
    if len(ours) != len(reference):
        raise Mismatch(f"{len(ours)} stanzas, libxml2 found {len(reference)}: {whole!r}")
    for st, el in zip(ours, reference, strict=True):
        expected = (el.tag, dict(el.attrib.items()), _canonical(el))
        if _describe(st) != expected:
            raise Mismatch(f"stanza differs: {_describe(st)!r} != {expected!r}")
    # The same stanzas whatever the split (TCP cuts anywhere, also inside UTF-8 sequences).
    if len(whole) < 4096:
        reference_raw = [st.raw for st in ours]
        step = max(1, len(whole) // 64)
        for cut in range(1, len(whole), step):
            split, split_error = _ours([whole[:cut], whole[cut:]])
            if split_error is not None or [s.raw for s in split] != reference_raw:
                raise Mismatch(f"split at {cut} changes the result: {whole!r}")
