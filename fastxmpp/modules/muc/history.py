"""Discussion history (XEP-0045 §7.2.15, §7.2.16): the room's last messages, in memory,
bounded by the room's configured length, sent to a newcomer after the occupants' presence,
with XEP-0203 delay stamps from the room."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..._router import delay_element, with_delay
from ...delay import parse_stamp, stamp

# Bytes of history one room keeps at most, whatever its configured length: a bound on what
# long messages can make the server hold (the oldest go first).
MAX_HISTORY_BYTES = 1 << 20


class History:
    def __init__(self, length: int) -> None:
        # (time, serialized message without 'to' nor <delay/>, its bytes with the <delay/>):
        # the stamp and the <delay/> are made when a newcomer asks (select), not for every
        # message the room sends.
        self.entries: deque[tuple[float, bytes, int]] = deque(maxlen=max(length, 0))
        self.size = 0  # bytes held, counted as sent (with the <delay/>)
        self.room_jid = ""
        self.delay_size = 0  # bytes a <delay/> from room_jid adds (its stamp's length is fixed)

    def resize(self, length: int) -> None:
        if length != self.entries.maxlen:
            self.entries = deque(self.entries, maxlen=max(length, 0))
            self.size = sum(size for _, _, size in self.entries)

    def add(self, message: bytes, room_jid: str) -> None:
        """Keep a groupchat message: its bytes as the room sends it ('from' the occupant
        JID, no 'to'), which get the room's <delay/> when they are sent as history."""
        if not self.entries.maxlen:
            return
        if room_jid != self.room_jid:
            self.room_jid = room_jid
            self.delay_size = len(delay_element(room_jid, stamp(0.0, fraction=True)))
        size = len(message) + self.delay_size
        if len(self.entries) == self.entries.maxlen:
            self.size -= self.entries[0][2]
        self.entries.append((time.time(), message, size))
        self.size += size
        while self.size > MAX_HISTORY_BYTES and self.entries:
            self.size -= self.entries.popleft()[2]

    def select(self, request: Any) -> list[bytes]:
        """The messages a join's <history/> asks for (§7.2.15): all of them without one;
        maxchars, maxstanzas, seconds and since combine (each one only narrows)."""
        entries = [(when, self._delayed(when, data)) for when, data, _ in self.entries]
        if request is None:
            return [data for _, data in entries]
        max_stanzas = _number(request.get("maxstanzas"))
        max_chars = _number(request.get("maxchars"))
        seconds = _number(request.get("seconds"))
        since_text = request.get("since")
        oldest = 0.0
        if seconds is not None:
            oldest = time.time() - seconds
        if since_text is not None:
            since = parse_stamp(since_text)
            if since is not None:
                oldest = max(oldest, since)
        picked: list[bytes] = []
        chars = 0
        for when, data in reversed(entries):
            length = len(data.decode())
            if max_stanzas is not None and len(picked) >= max_stanzas:
                break
            if when < oldest:
                break
            if max_chars is not None and chars + length > max_chars:
                break
            chars += length
            picked.append(data)
        picked.reverse()
        return picked

    def _delayed(self, when: float, message: bytes) -> bytes:
        """A kept message with the room's <delay/> (XEP-0203 §3), stamped when it was sent."""
        return with_delay(message, self.room_jid, stamp(when, fraction=True))


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return max(int(text), 0)
    except ValueError:
        return None
