"""STARTTLS on the receiving side of a stream (RFC 6120 §5.4.3.3), for client and server
streams alike."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

log = logging.getLogger("fastxmpp.tls")

HANDSHAKE_TIMEOUT = 30.0


async def start_server_tls(protocol: Any, context: ssl.SSLContext, what: str) -> Any | None:
    """Upgrade `protocol.transport` to TLS with `context`; the new transport, or None when
    the handshake failed: then it is logged, the protocol marked closing and its
    connection aborted."""
    try:
        return await asyncio.get_running_loop().start_tls(
            protocol.transport,
            protocol,
            context,
            server_side=True,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
        )
    except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
        log.info("%s TLS handshake with %s failed: %s", what, protocol.peer, exc)
        protocol.closing = True
        if protocol.transport is not None:
            protocol.transport.abort()
        return None
