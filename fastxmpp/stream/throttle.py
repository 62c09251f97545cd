"""Password-guessing defence: failed authentications counted per IP address and per account
over a sliding window. Beyond a few failures every further answer is delayed (exponential
back-off), beyond the limit the address or the account is refused for the rest of the window
with <temporary-auth-failure/> (RFC 6120 §6.5.12), whatever the password.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_DELAY = 30.0  # seconds: the longest back-off before a failure is answered
MAX_TRACKED = 100_000  # addresses and accounts remembered at once (oldest forgotten first)


def address_block(address: str, ipv6_prefix_length: int) -> str:
    """What the per-address limits count a client as: its IPv4 address (also when it came
    IPv4-mapped, RFC 4291 §2.5.5.2, to a dual-stack listener), or its IPv6 network of
    `ipv6_prefix_length` bits: a subscriber is given a /64 at least (RFC 6177), in which a
    new address for every connection costs nothing. Anything else ("?") as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ipv6_prefix_length < 128:
            return str(ipaddress.IPv6Network((ip, ipv6_prefix_length), strict=False))
    return str(ip)


class AuthThrottle:
    def __init__(
        self,
        free_failures: int,
        per_ip: int,
        per_account: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.per_ip = per_ip
        self.per_account = per_account
        self.window = window
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _count(self, key: str) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = self.clock() - self.window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def record_failure(self, address: str, account: str | None) -> None:
        now = self.clock()
        for key in (f"ip {address}", f"account {account}" if account else None):
            if key is None:
                continue
            times = self._failures.pop(key, None) or deque()
            times.append(now)
            self._failures[key] = times  # most recent last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def refused(self, address: str, account: str | None = None) -> bool:
        """Too many failures lately from this address, or against this account."""
        if self._count(f"ip {address}") >= self.per_ip:
            return True
        return account is not None and self._count(f"account {account}") >= self.per_account

    def delay(self, address: str, account: str | None = None) -> float:
        """Seconds to wait before answering the next failure (0 for the first few)."""
        failures = self._count(f"ip {address}")
        if account is not None:
            failures = max(failures, self._count(f"account {account}"))
        if failures < self.free_failures:
            return 0.0
        return min(MAX_DELAY, 2.0 ** (failures - self.free_failures))
