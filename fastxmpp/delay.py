"""XEP-0203 delayed delivery: the <delay/> element the server adds to what it hands over
late (offline messages, room history, last published items, unacknowledged messages, the
last unavailable presence of a contact), and the XEP-0082 stamps it carries."""

from __future__ import annotations

from datetime import UTC, datetime

from ._router import delay_element

NS_DELAY = "urn:xmpp:delay"
# The reason stated in the <delay/> of a message kept for an account that was offline (RFC
# 6121 §8.5.2.2.1) or that a session never acknowledged (XEP-0198 §4).
OFFLINE_REASON = "Offline Storage"


def stamp(when: float, fraction: bool = False) -> str:
    """XEP-0082 DateTime in UTC; `fraction` keeps the microseconds (for a room's `since`
    comparisons, XEP-0045 §7.2.15)."""
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.fromtimestamp(when, UTC).strftime(pattern)


def parse_stamp(text: str) -> float | None:
    """A XEP-0082 DateTime as Unix time; None when it is not one."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def delay_xml(from_jid: str, when: float, reason: str = "") -> str:
    """<delay/> (XEP-0203 §3): `from_jid` is the entity that delayed the stanza."""
    return delay_element(from_jid, stamp(when), reason).decode()
