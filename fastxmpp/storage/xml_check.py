"""Checks for stored XML: a record the server hands to clients as it is (a vCard, private
XML, an offline message) must be well-formed elements of the expected kind, or one corrupt
record would break the stream of every client it is sent to (Storage.decode quarantines what
fails these checks)."""

from __future__ import annotations

from lxml import etree

from .lmdb_store import CorruptRecord

# No entities, no network, no DTD: stored XML never needs them.
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, recover=False
)
_OPEN = b"<stored xmlns='jabber:client'>"
_CLOSE = b"</stored>"


def check_elements(
    raw: bytes,
    tags: tuple[str, ...] | None = None,
    *,
    namespace: str | None = None,
    most: int | None = None,
) -> bytes:
    """`raw` when it is one or more (at most `most`) elements, nothing else but whitespace
    between them, each a `tags` element (Clark notation) or of `namespace` when given, in
    the jabber:client default namespace of a stream; CorruptRecord otherwise."""
    try:
        wrapper = etree.fromstring(_OPEN + raw + _CLOSE, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise CorruptRecord(f"not well-formed XML: {exc}") from None
    children = list(wrapper)
    if not children or (most is not None and len(children) > most):
        raise CorruptRecord(f"{len(children)} elements")
    for text in [wrapper.text, *(child.tail for child in children)]:
        if text and text.strip():
            raise CorruptRecord("text outside the elements")
    for child in children:
        if not isinstance(child.tag, str):
            raise CorruptRecord("a comment or processing instruction")
        if tags is not None and child.tag not in tags:
            raise CorruptRecord(f"a {child.tag} element")
        if namespace is not None and etree.QName(child).namespace != namespace:
            raise CorruptRecord(f"a {child.tag} element")
    return raw
