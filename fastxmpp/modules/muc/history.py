"""Discussion history (XEP-0045 §7.2.15, §7.2.16): the room's last messages, in memory,
bounded by the room's configured length, sent to a newcomer after the occupants' presence,
with XEP-0203 delay stamps from the room."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ..._router import with_delay
from ...delay import parse_stamp, stamp

# Bytes of history one room keeps at most, whatever its configured length: a bound on what
# long messages can make the server hold (the oldest go first).
MAX_HISTORY_BYTES = 1 << 20


class History:
    def __init__(self, length: int) -> None:
        # (time, serialized message without 'to', its length in characters)
        self.entries: deque[tuple[float, bytes, int]] = deque(maxlen=max(length, 0))
        self.size = 0  # bytes held

    def resize(self, length: int) -> None:
        if length != self.entries.maxlen:
            self.entries = deque(self.entries, maxlen=max(length, 0))
            self.size = sum(len(data) for _, data, _ in self.entries)

    def add(self, message: bytes, room_jid: str) -> None:
        """Keep a groupchat message: its bytes as the room sends it ('from' the occupant
        JID, no 'to'), which get the room's <delay/>."""
        if not self.entries.maxlen:
            return
        now = time.time()
        when = stamp(now, fraction=True)
        data = with_delay(message, room_jid, when)
        if len(self.entries) == self.entries.maxlen:
            self.size -= len(self.entries[0][1])
        self.entries.append((now, data, len(data.decode())))
        self.size += len(data)
        while self.size > MAX_HISTORY_BYTES and self.entries:
            self.size -= len(self.entries.popleft()[1])

    def select(self, request: Any) -> list[bytes]:
        """The messages a join's <history/> asks for (§7.2.15): all of them without one;
        maxchars, maxstanzas, seconds and since combine (each one only narrows)."""
        entries = list(self.entries)
        if request is None:
            return [data for _, data, _ in entries]
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
        for when, data, length in reversed(entries):
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


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return max(int(text), 0)
    except ValueError:
        return None
