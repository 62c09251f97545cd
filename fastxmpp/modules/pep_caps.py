"""XEP-0115 entity capabilities, as the PEP module needs them: the verification string of a
disco#info answer (§5.1, with the checks of §5.4), and a bounded cache of verified answers
shared by every account (§5.4: "globally cache the result").

Only what PEP filtering uses is kept per `ver`: the nodes the entity wants notifications
for (its `<node>+notify` features, XEP-0060 §9.2).
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from typing import Any

NS_CAPS = "http://jabber.org/protocol/caps"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
NOTIFY_SUFFIX = "+notify"

# The IANA hash function textual names (XEP-0115 §5.1 step 9) hashlib can compute. MD2 is
# not among them; an unknown hash makes the answer valid for its own entity only (§5.4.2).
HASHES = {
    "md5": "md5",
    "sha-1": "sha1",
    "sha-224": "sha224",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}


def _sorted_bytewise(values: list[str]) -> list[str]:
    # §5.1: "sort" is the "i;octet" collation of RFC 4790: by the UTF-8 bytes.
    return sorted(values, key=lambda text: text.encode())


def _form(form: Any) -> tuple[str, str] | None:
    """(FORM_TYPE, the form's part of S) of an extended info form (XEP-0128); None when the
    form is to be ignored (§5.4.3.6); ValueError when it makes the answer ill-formed."""
    form_type: str | None = None
    fields: dict[str, list[str]] = {}
    for field in form.iterfind(f"{{{NS_DATA}}}field"):
        var = field.get("var")
        if var is None:
            continue
        values = [value.text or "" for value in field.iterfind(f"{{{NS_DATA}}}value")]
        if var == "FORM_TYPE":
            if field.get("type") != "hidden" or not values:
                return None
            if len(set(values)) > 1:
                raise ValueError("FORM_TYPE with several values")
            form_type = values[0]
        else:
            fields[var] = values
    if form_type is None:
        return None
    text = form_type + "<"
    for var in _sorted_bytewise(list(fields)):
        text += var + "<" + "".join(v + "<" for v in _sorted_bytewise(fields[var]))
    return form_type, text


def verification_string(query: Any) -> str | None:
    """S of §5.1 for a disco#info <query/> element; None when the answer is ill-formed
    (§5.4.3.3-5: a duplicate identity, feature or form)."""
    identities = []
    for identity in query.iterfind(f"{{{NS_INFO}}}identity"):
        identities.append(
            "/".join(
                (
                    identity.get("category", ""),
                    identity.get("type", ""),
                    identity.get(XML_LANG, ""),
                    identity.get("name", ""),
                )
            )
        )
    features = [f.get("var", "") for f in query.iterfind(f"{{{NS_INFO}}}feature")]
    if len(set(identities)) != len(identities) or len(set(features)) != len(features):
        return None
    forms: dict[str, str] = {}
    try:
        for form in query.iterfind(f"{{{NS_DATA}}}x"):
            found = _form(form)
            if found is None:
                continue
            if found[0] in forms:
                return None
            forms[found[0]] = found[1]
    except ValueError:
        return None
    text = "".join(i + "<" for i in _sorted_bytewise(identities))
    text += "".join(f + "<" for f in _sorted_bytewise(features))
    text += "".join(forms[t] for t in _sorted_bytewise(list(forms)))
    return text


def caps_hash(algorithm: str, query: Any) -> str | None:
    """The 'ver' an entity answering `query` should announce with `algorithm` (§5.1 steps
    8-9); None for an unknown algorithm or an ill-formed answer."""
    name = HASHES.get(algorithm.lower())
    text = verification_string(query)
    if name is None or text is None:
        return None
    return base64.b64encode(hashlib.new(name, text.encode()).digest()).decode()


def notify_nodes(query: Any) -> frozenset[str]:
    """The nodes whose notifications the entity asks for (XEP-0060 §9.2)."""
    return frozenset(
        var[: -len(NOTIFY_SUFFIX)]
        for f in query.iterfind(f"{{{NS_INFO}}}feature")
        if (var := f.get("var", "")).endswith(NOTIFY_SUFFIX) and len(var) > len(NOTIFY_SUFFIX)
    )


class CapsCache:
    """Verified (hash, ver) -> the +notify nodes, least recently used out first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> frozenset[str] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: tuple[str, str], nodes: frozenset[str]) -> None:
        self._entries[key] = nodes
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
