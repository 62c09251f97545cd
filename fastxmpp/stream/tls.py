"""TLS on the receiving side of a stream: STARTTLS (RFC 6120 §5.4.3.3) for client and server
streams alike, and XEP-0368 direct TLS, run by the connection itself over memory BIOs
(`ServerTLS`, compiled in fastxmpp/_transport.pyx with the per-read path); here the contexts
of direct TLS listeners, which pick each host's certificate by SNI."""

from __future__ import annotations

import ssl
from typing import Any

import idna

from .._transport import ServerTLS, tls_record_start

__all__ = ["DirectTLS", "ServerTLS", "tls_record_start"]

HANDSHAKE_TIMEOUT = 30.0


# XEP-0368 §3: the ALPN protocol of direct TLS client connections.
ALPN_CLIENT = "xmpp-client"


def _sni_name(host: str) -> str:
    """`host` as TLS SNI carries it (RFC 6066 §3: ASCII, an IDN as its A-label)."""
    try:
        return idna.encode(host).decode().lower()
    except idna.IDNAError:
        return host.lower()


class DirectTLS:
    """The context a XEP-0368 direct TLS listener (or an HTTPS one) starts each connection
    with, and one context per host (made for this listener, not shared with STARTTLS), all
    offering ALPN `alpn` ('xmpp-client'; 'http/1.1' on HTTPS listeners).

    Before TLS there is no stream header to name the host, so the SNI the client sends picks
    the host's certificate (XEP-0368 §3: clients set SNI to the JID's domain). Without SNI,
    or with a name we do not serve, the first host's certificate goes out and the stream
    header decides as on a STARTTLS port (host-unknown for a domain not served). A client
    offering ALPN without 'xmpp-client' gets no ALPN answer, not a refusal (RFC 7301 §3.2
    lets the server ignore the extension).

    Every connection is moved to a host's context of the moment, SNI or not (OpenSSL asks
    the callback either way), so that `update` (new certificates, on SIGHUP) reaches new
    connections although the listener keeps its `initial` context for good."""

    def __init__(self, contexts: dict[str, ssl.SSLContext], alpn: str = ALPN_CLIENT) -> None:
        self.alpn = alpn
        self._by_sni: dict[str, ssl.SSLContext] = {}
        self._first = _sni_name(next(iter(contexts)))
        self.update(contexts)
        self.initial = self._by_sni[self._first]
        self.initial.sni_callback = self._select_host

    def update(self, contexts: dict[str, ssl.SSLContext]) -> None:
        """New contexts for these hosts, for connections from now on."""
        for host, context in contexts.items():
            context.set_alpn_protocols([self.alpn])
            self._by_sni[_sni_name(host)] = context

    def _select_host(self, connection: Any, server_name: str | None, _context: Any) -> None:
        chosen = self._by_sni.get(server_name.lower()) if server_name else None
        connection.context = chosen or self._by_sni[self._first]
