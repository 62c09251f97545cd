"""TLS on the receiving side of a stream: STARTTLS (RFC 6120 §5.4.3.3) for client and server
streams alike, and XEP-0368 direct TLS, run by the connection itself over memory BIOs
(`ServerTLS`, compiled in fastxmpp/_transport.pyx with the per-read path); here the context
of direct TLS listeners, which picks each host's certificate by SNI."""

from __future__ import annotations

import ssl
from typing import Any

import idna

from .._transport import ServerTLS, tls_record_start

__all__ = ["ServerTLS", "direct_tls_context", "tls_record_start"]

HANDSHAKE_TIMEOUT = 30.0


# XEP-0368 §3: the ALPN protocol of direct TLS client connections.
ALPN_CLIENT = "xmpp-client"


def _sni_name(host: str) -> str:
    """`host` as TLS SNI carries it (RFC 6066 §3: ASCII, an IDN as its A-label)."""
    try:
        return idna.encode(host).decode().lower()
    except idna.IDNAError:
        return host.lower()


def direct_tls_context(
    contexts: dict[str, ssl.SSLContext], alpn: str = ALPN_CLIENT
) -> ssl.SSLContext:
    """The context a XEP-0368 direct TLS listener starts with, `contexts` being one per host
    (made for this listener, not shared with STARTTLS), all offered ALPN `alpn`
    ('xmpp-client'; 'http/1.1' on HTTPS listeners).

    Before TLS there is no stream header to name the host, so the SNI the client sends picks
    the host's certificate (XEP-0368 §3: clients set SNI to the JID's domain). Without SNI,
    or with a name we do not serve, the first host's certificate goes out and the stream
    header decides as on a STARTTLS port (host-unknown for a domain not served). A client
    offering ALPN without 'xmpp-client' gets no ALPN answer, not a refusal (RFC 7301 §3.2
    lets the server ignore the extension)."""
    by_sni = {_sni_name(host): context for host, context in contexts.items()}
    for context in contexts.values():
        context.set_alpn_protocols([alpn])
    initial = next(iter(contexts.values()))

    def select_host(connection: Any, server_name: str | None, _context: Any) -> None:
        chosen = by_sni.get(server_name.lower()) if server_name else None
        if chosen is not None:
            connection.context = chosen

    initial.sni_callback = select_host
    return initial
