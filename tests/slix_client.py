"""The slixmpp account the tests log in with: STARTTLS (or XEP-0368 direct TLS) verified
against the test CA, never plaintext; `ready` resolves at session start (after the initial
presence) or fails on authentication failure; messages are queued for the test to read."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import PASSWORD
from slixmpp import ClientXMPP


class SlixClient(ClientXMPP):
    def __init__(
        self,
        jid: str,
        ca_file: str,
        *,
        mechanism: str | None = None,
        direct_tls: bool = False,
        starttls: bool = True,
        plugins: tuple[str, ...] = (),
    ) -> None:
        super().__init__(jid, PASSWORD, sasl_mech=mechanism)
        self.ca_certs = ca_file
        self.enable_direct_tls = direct_tls
        self.enable_starttls = starttls
        self.enable_plaintext = False
        for plugin in plugins:
            self.register_plugin(plugin)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.ready = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._started)
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("failed_all_auth", self._auth_failed)

    async def _started(self, _event: Any) -> None:
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(True)

    def _auth_failed(self, _event: Any) -> None:
        if not self.ready.done():
            self.ready.set_exception(AssertionError("authentication failed"))

    async def online(self, port: int) -> None:
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self.ready, 20)
