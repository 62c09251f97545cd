"""The differential oracle for the stream parser: one fuzz input is checked against a reference
parse by a second XML library (libxml2 through lxml), so that a silent mis-parse is a finding
and not only a crash.

`check(data)` raises `Mismatch` when fastxmpp's `StreamParser` and the reference disagree on
a stream made of a fixed header, `data`, and the closing tag:

- both accept: the same top-level stanzas, also when the bytes arrive split in two at any
  position. For each stanza, what fastxmpp's parser itself reports and routing reads
  (`name`, `ns`, `prefix`, `attrs`, the namespace declarations `nsdecls`, the `children`'s
  names, `empty`) must equal libxml2's reading of the same bytes; `raw`, parsed again in the
  stream's context, must hold the same content (names, attributes, text, children, in
  order); and the bytes `with_attrs()` makes (the stanza with its 'from' stamped, with an
  attribute removed and one set to a value that needs escaping) must parse again, outside
  the input stream, into the same stanza with exactly those changes;
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
# The stream header's namespace declarations, which every stanza inherits.
STREAM_NSMAP = {None: "jabber:client", "stream": "http://etherx.jabber.org/streams"}
# The stanza after with_attrs() goes to another stream whose content namespace is this one
# (RFC 6120 §4.8.2): it may rely on nothing else the input stream declared.
DELIVERY_CONTEXT = (b"<_ xmlns='jabber:client'>", b"</_>")
# Attribute changes with_attrs() is asked for: the router's 'from' stamp (spliced into the
# received tag when the stanza has none), and a rebuilt tag with one attribute removed and
# one set to a value that must be escaped.
ATTRIBUTE_CHANGES: list[dict[str, str | None]] = [
    {"from": "juliet@localhost/balcony"},
    {"to": None, "from": "a\"b'c<d>&e\tf\ng\rh]]>"},
]
XMPP_ONLY = {
    "restricted-xml",
    "policy-violation",
    "unsupported-encoding",
    "bad-format",
    "unsupported-stanza-type",
}
# libxml2 refusals that XML 1.0 + Namespaces do not ask for: the namespace name must be a
# "URI reference", which a conforming processor need not verify (expat does not); an
# xml:id value must be an NCName, and unique in the document, only for an xml:id
# processor (W3C xml:id §4: "xml:id errors", not well-formedness ones), which an XML parser
# need not be (found by the fuzzer with xml:id='r!' and xml:id='').
LIBXML2_ONLY = {"WAR_NS_URI", "WAR_NS_URI_RELATIVE", "DTD_XMLID_VALUE", "DTD_ID_REDEFINED"}


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
    """libxml2's top-level children, or None when it finds the document not well-formed."""
    root = _libxml2(document)
    return None if root is None else list(root)


def _libxml2(document: bytes) -> Any:
    """libxml2's root element, or None when it finds the document not well-formed. Parsed in
    recover mode so that every problem is logged, then judged from the log."""
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
    return root


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


def _clark(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}" if ns else name


def _describe(st: Stanza) -> tuple[Any, ...]:
    """What fastxmpp's parser reports for a stanza, in libxml2's terms, and the content of
    its raw bytes read again."""
    nsmap = dict(STREAM_NSMAP)
    for prefix, uri in st.nsdecls or ():
        if uri:
            nsmap[prefix] = uri
        else:
            nsmap.pop(prefix, None)  # xmlns='' undeclares the default namespace
    return (
        _clark(st.ns, st.name),
        st.prefix,
        dict(st.attrs),
        nsmap,
        [_clark(ns, name) for ns, name in st.children],
        st.empty,
        _canonical(st.element()),
    )


def _expected(st: Stanza, el: Any) -> tuple[Any, ...]:
    """libxml2's reading of the stanza, in _describe's terms. lxml does not tell whether the
    outer tag was an empty-element tag: that, and only that, makes raw end with '/>'."""
    # items(), not dict(attrib): lxml cannot look an attribute up by a "{namespace}name" key
    # whose namespace holds a "}" (found by tests/fuzz), though it lists it
    nsmap = dict(el.nsmap)
    if nsmap.get(None) == "":
        # xmlns='' (no default namespace) is the same as none declared, which is how
        # _describe reads it; lxml lists it as None: '' (found by tests/fuzz)
        del nsmap[None]
    return (
        el.tag,
        el.prefix,
        dict(el.attrib.items()),
        nsmap,
        [child.tag for child in el if isinstance(child.tag, str)],
        st.raw.endswith(b"/>"),
        _canonical(el),
    )


def _with_changes(el: Any, changes: dict[str, str | None]) -> tuple[Any, ...]:
    """libxml2's stanza with `changes` applied: what with_attrs() must produce."""
    attrs = dict(el.attrib.items())
    for key, value in changes.items():
        if value is None:
            attrs.pop(key, None)
        else:
            attrs[key] = value
    tag, _, text, children, tails = _canonical(el)
    return tag, tuple(sorted(attrs.items())), text, children, tails


def _check_stanza(st: Stanza, el: Any, whole: bytes) -> None:
    ours, expected = _describe(st), _expected(st, el)
    if ours != expected:
        raise Mismatch(f"stanza differs: {ours!r} != {expected!r} in {whole!r}")
    for changes in ATTRIBUTE_CHANGES:
        out = st.with_attrs(changes)
        again = _libxml2(DELIVERY_CONTEXT[0] + out + DELIVERY_CONTEXT[1])
        if again is None:
            raise Mismatch(f"with_attrs({changes!r}) made {out!r}, not XML ({whole!r})")
        wanted = _with_changes(el, changes)
        if len(again) != 1 or _canonical(again[0]) != wanted:
            raise Mismatch(f"with_attrs({changes!r}) made {out!r}, not {wanted!r} ({whole!r})")


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
        _check_stanza(st, el, whole)
    # The same stanzas whatever the split (TCP cuts anywhere, also inside UTF-8 sequences).
    if len(whole) < 4096:
        reference_raw = [st.raw for st in ours]
        step = max(1, len(whole) // 64)
        for cut in range(1, len(whole), step):
            split, split_error = _ours([whole[:cut], whole[cut:]])
            if split_error is not None or [s.raw for s in split] != reference_raw:
                raise Mismatch(f"split at {cut} changes the result: {whole!r}")
