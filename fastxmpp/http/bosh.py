"""XEP-0124 BOSH with XEP-0206 (XMPP over BOSH) at /http-bind: the same client stream as
TCP, carried by a sequence of HTTP requests.

A `BoshSession` is the transport of one c2s stream (a `BoshConnection`, framing.py). Each
request is a <body/> whose children are stanzas; they go to the stream in 'rid' order
(§14.1: requests that arrive early wait for the ones before them, within the window of
`requests`), a request whose 'rid' was answered already gets the same answer again (§14.3:
the session survives a lost response), one outside the window ends the session with
item-not-found. After its stanzas a request is held (§7.2: at most `hold`, for at most
`wait` seconds) until the stream has something to send: what the stream writes goes into
the response of the oldest held request, or waits for the next request. XEP-0206 §5 stream
restarts (xmpp:restart) stand for the stream header after SASL. A session nobody polls for
`inactivity` seconds is over (the connection is lost: XEP-0198 may keep its session for
resumption). Binding errors are <body type='terminate' condition='...'/> (§17), a stream
error is wrapped in remote-stream-error (XEP-0206 §6).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from aiohttp import web

from .. import ns
from .._parser import STREAM_END, Stanza, StreamHeader, StreamParser
from ..stream.c2s import accept
from .framing import FramedConnection, OutputCutter, standalone

if TYPE_CHECKING:
    from ..server import Server
    from .server import ClientAddress

log = logging.getLogger("fastxmpp.bosh")

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
BOSH_PATH = "/http-bind"
VERSION = "1.11"  # of XEP-0124
MAX_HOLD = 1  # requests held at once: what clients ask for; 'requests' is one more (§7.1)
RESTART = "{" + NS_XBOSH + "}restart"
XMPP_VERSION = "{" + NS_XBOSH + "}version"
HEADERS = {
    "Content-Type": "text/xml; charset=utf-8",
    # Web clients on other origins post here; no cookies are involved (the session id is in
    # the body), so any origin may (XEP-0124 §16.3 leaves it to the connection manager).
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "no-store",
}


class BindingError(Exception):
    """A terminal binding condition (XEP-0124 §17.2)."""

    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


def body(attrs: dict[str, str] | None = None, payload: bytes = b"") -> bytes:
    text = "".join(f" {name}={quoteattr(value)}" for name, value in (attrs or {}).items())
    return f"<body xmlns='{NS_HTTPBIND}'{text}".encode() + (
        b">" + payload + b"</body>" if payload else b"/>"
    )


def terminate(condition: str | None = None, payload: bytes = b"") -> bytes:
    attrs = {"type": "terminate"}
    if condition:
        attrs["condition"] = condition
    return body(attrs, payload)


@dataclass
class Held:
    """A request waiting for its response."""

    rid: int
    answer: asyncio.Future[bytes]
    timer: asyncio.TimerHandle | None = None
    attrs: dict[str, str] = field(default_factory=dict)  # the session creation response's


class BoshConnection(FramedConnection):
    """A client stream's connection over BOSH: events come from `BoshSession`."""

    def deliver(self, events: list[Any]) -> None:
        if self.closing:
            return
        if self.tracer is not None:
            self.tracer(self, b"".join(getattr(e, "raw", b"") for e in events), events)
        if self.busy:
            self.pending.extend(events)
            return
        self.owner.handle(events)


class BoshSession:
    """One BOSH session: the transport of its stream (`write`, `close` ...)."""

    def __init__(
        self,
        service: BoshService,
        sid: str,
        host: str,
        rid: int,
        wait: float,
        hold: int,
        client: ClientAddress,
    ) -> None:
        self.service = service
        self.sid = sid
        self.host = host  # the 'to' of the creation request: every stream header's
        self.next_rid = rid  # the next request to process (§14.1)
        self.wait = wait
        self.hold = hold
        self.window = hold + 1  # 'requests' (§7.1)
        self.client = client
        self.connection: BoshConnection | None = None
        self.cutter = OutputCutter()
        self.output: list[bytes] = []  # elements for the next response
        self.output_size = 0
        self.held: list[Held] = []
        self.early: dict[int, tuple[Held, list[Any], dict[str, str]]] = {}  # rid -> request
        self.answered: OrderedDict[int, bytes] = OrderedDict()  # rid -> response (§14.3)
        self.ending: bytes | None = None  # the terminating response once the stream is over
        self.ending_delivered = False  # a request got it (later ones: item-not-found)
        self.closing = False
        self.inactivity: asyncio.TimerHandle | None = None
        self.stream_error: str | None = None  # the condition of the stream error we sent
        self.authid = ""  # the stream id (XEP-0206 §4)

    # --- requests ------------------------------------------------------------------------

    async def request(self, rid: int, attrs: dict[str, str], events: list[Any]) -> bytes:
        """A request of this session (not the creating one): its response."""
        if rid in self.answered:
            return self.answered[rid]  # §14.3: the same answer again
        loop = asyncio.get_running_loop()
        for held in self.held:
            if held.rid == rid:
                # §14.3: a copy of a request we hold: the older one is answered with a
                # recoverable error, the answer goes to this one.
                older, held.answer = held.answer, loop.create_future()
                if not older.done():
                    older.set_result(body({"type": "error"}))
                return await held.answer
        if not self.next_rid <= rid < self.next_rid + self.window:
            # §14.1: the same for too small or large, and it MUST terminate the session
            # (§17.2): a request guessing or replaying 'rid's does not leave it usable.
            self._end(None)
            raise BindingError("item-not-found")
        if self.closing:
            if self.ending is None or self.ending_delivered:
                raise BindingError("item-not-found")  # the session is over
            # The stream ended while no request was held: this one learns it.
            self.ending_delivered = True
            self.next_rid += 1
            return self._remember(rid, self.ending)
        held = Held(rid, loop.create_future())
        if rid in self.early:
            self._release(self.early[rid][0], body({"type": "error"}))
        self.early[rid] = (held, events, attrs)
        self._stop_inactivity()
        while self.next_rid in self.early:
            self._process(*self.early.pop(self.next_rid))
        return await held.answer

    def _process(self, held: Held, events: list[Any], attrs: dict[str, str]) -> None:
        """The request whose turn it is (§14.1): its payload to the stream, then it waits."""
        self.next_rid += 1
        self.held.append(held)
        connection = self.connection
        if connection is not None:
            if attrs.get(RESTART) == "true" and not connection.header_sent:
                # XEP-0206 §5: the restart stands for the new stream header.
                events = [*connection.stream_header(self._header_attrs(attrs)), *events]
            if attrs.get("type") == "terminate":
                events = [*events, STREAM_END]  # §13: the client ends the session
            if events:
                connection.deliver(events)
        if self.ending is None and (self.output or len(self.held) > self.hold):
            self._respond()  # §7.2: never more than 'hold' waiting
        if self.ending is None and held.timer is None and not held.answer.done():
            held.timer = asyncio.get_running_loop().call_later(self.wait, self._timed_out, held)

    def _header_attrs(self, attrs: dict[str, str]) -> dict[str, str]:
        header = {"to": self.host, "version": "1.0"}
        if "{" + ns.XML + "}lang" in attrs:
            header["{" + ns.XML + "}lang"] = attrs["{" + ns.XML + "}lang"]
        return header

    def _timed_out(self, held: Held) -> None:
        held.timer = None
        if held in self.held and not self.output:
            # §7.2: nothing to say within 'wait': an empty body.
            self.held.remove(held)
            self._release(held, self._remember(held.rid, body()))
            self._maybe_inactive()

    def _respond(self) -> None:
        """The oldest held request takes what is waiting (§7.2: answered in 'rid' order)."""
        if not self.held:
            return
        held = self.held.pop(0)
        payload, self.output, self.output_size = b"".join(self.output), [], 0
        attrs = held.attrs
        if attrs and self.authid:
            attrs = {**attrs, "authid": self.authid}  # the creation response (XEP-0206 §4)
        self._release(held, self._remember(held.rid, body(attrs, payload)))
        self._maybe_inactive()

    def _release(self, held: Held, response: bytes) -> None:
        if held.timer is not None:
            held.timer.cancel()
            held.timer = None
        if not held.answer.done():
            held.answer.set_result(response)

    def _remember(self, rid: int, response: bytes) -> bytes:
        self.answered[rid] = response
        while len(self.answered) > self.window:
            self.answered.popitem(last=False)
        return response

    # --- inactivity (§10) ------------------------------------------------------------------

    def _maybe_inactive(self) -> None:
        if not self.held and not self.early and self.inactivity is None:
            self.inactivity = asyncio.get_running_loop().call_later(
                self.service.inactivity, self._inactive
            )

    def _stop_inactivity(self) -> None:
        if self.inactivity is not None:
            self.inactivity.cancel()
            self.inactivity = None

    def _inactive(self) -> None:
        self.inactivity = None
        log.info("c2s %s: BOSH session %s inactive", self.client.peer, self.sid)
        self._end(None)

    # --- what the stream writes (the transport surface) ------------------------------------

    def write(self, data: bytes) -> None:
        if self.closing or self.ending is not None:
            return
        for event in self.cutter.cut(data):
            if type(event) is Stanza:
                element = standalone(event)
                if event.ns == ns.STREAMS and event.name == "error" and event.children:
                    self.stream_error = event.children[0][1]
                self.output.append(element)
                self.output_size += len(element)
            elif type(event) is StreamHeader:
                self.authid = event.attrs.get("id", "")
            elif event is STREAM_END:
                self._stream_over()
                return
            else:
                log.error("c2s %s: cannot frame our own output: %s", self.client.peer, event)
                self._stream_over()
                return
        if self.output:
            self._respond()
        if self.output_size > self.service.max_output and self.connection is not None:
            self.connection.pause_writing()  # nobody polls: the slow-reader rule

    def _stream_over(self) -> None:
        """Our closing tag: the session ends with what is waiting (XEP-0206 §6: a stream
        error as remote-stream-error)."""
        payload, self.output, self.output_size = b"".join(self.output), [], 0
        condition = None
        if self.stream_error is not None:
            # §17.2 names host-unknown itself; any other is XEP-0206 §6's wrapper.
            known = self.stream_error == "host-unknown"
            condition = self.stream_error if known else "remote-stream-error"
        self.ending = terminate(condition, payload)
        for held in self.held:
            self.ending_delivered = True
            self._release(held, self._remember(held.rid, self.ending))
        self.held.clear()
        self._end(None)

    def _end(self, reason: Exception | None) -> None:
        """The session is over: the stream's connection is lost (once)."""
        if self.closing:
            return
        self.closing = True
        self._stop_inactivity()
        for held in self.held:
            self._release(held, terminate())
        for held, _, _ in self.early.values():
            self._release(held, terminate())
        self.held.clear()
        self.early.clear()
        if self.ending is not None and not self.ending_delivered:
            # The stream ended with no request waiting: the next one (within the
            # inactivity time) learns how. Otherwise the session leaves the table now, so
            # that sessions refused at creation cannot pile up.
            asyncio.get_running_loop().call_later(
                self.service.inactivity, self.service.sessions.pop, self.sid, None
            )
        else:
            self.service.sessions.pop(self.sid, None)
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.connection_lost(reason)

    def is_closing(self) -> bool:
        return self.closing or self.ending is not None

    def close(self) -> None:
        if self.ending is None:
            self._stream_over()

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return self.output_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass  # requests keep their order in the session; a step's events wait in `pending`

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class BoshService:
    """/http-bind: parses each request and hands it to its session."""

    def __init__(self, server: Server, http: Any) -> None:
        self.server = server
        self.http = http
        config = server.config.http
        self.max_wait = config.bosh_max_wait
        self.inactivity = config.bosh_inactivity
        self.secure_anyway = config.consider_bosh_secure
        self.max_output = server.config.limits.max_outbound_buffer
        self.read_timeout = config.idle_timeout
        self.sessions: dict[str, BoshSession] = {}

    async def handle(self, request: web.Request) -> web.Response:
        try:
            data = await asyncio.wait_for(request.read(), self.read_timeout)
        except TimeoutError:
            # A body that does not come (slowloris): the connection goes.
            log.info("BOSH request from %s: body not sent in time", request.remote)
            raise web.HTTPRequestTimeout() from None
        try:
            attrs, events = self._parse(data)
            sid = attrs.get("sid")
            if sid is None:
                response = await self._create(request, attrs, events)
            else:
                session = self.sessions.get(sid)
                if session is None:
                    raise BindingError("item-not-found")  # §17.2: unknown session
                response = await session.request(self._rid(attrs), attrs, events)
        except BindingError as err:
            log.info("BOSH request from %s: %s", request.remote, err.condition)
            response = terminate(err.condition)
        return web.Response(body=response, headers=HEADERS)

    async def preflight(self, _request: web.Request) -> web.Response:
        """CORS preflight of a cross-origin POST (text/xml is not a simple content type)."""
        return web.Response(
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type",
                "Access-Control-Max-Age": "86400",
            }
        )

    def _parse(self, data: bytes) -> tuple[dict[str, str], list[Any]]:
        """The <body/> wrapper's attributes and its children as stream events."""
        limits = self.server.config.limits
        parser = StreamParser(
            limits.max_stanza_size, limits.max_depth, limits.max_attributes, limits.max_elements
        )
        events = list(parser.feed(data))
        if parser.failed:
            condition = next((e.condition for e in events if hasattr(e, "condition")), "")
            raise BindingError(
                "policy-violation" if condition == "policy-violation" else "bad-request"
            )
        if not events or type(events[0]) is not StreamHeader or events[-1] is not STREAM_END:
            raise BindingError("bad-request")  # §17.2: not one complete <body/>
        header = events[0]
        if header.ns != NS_HTTPBIND or header.name != "body":
            raise BindingError("bad-request")
        return dict(header.attrs), events[1:-1]

    @staticmethod
    def _rid(attrs: dict[str, str]) -> int:
        rid = attrs.get("rid", "")
        if not rid.isdigit() or len(rid) > 16:
            raise BindingError("bad-request")  # §7.1: a positive integer below 2**53
        return int(rid)

    async def _create(
        self, request: web.Request, attrs: dict[str, str], events: list[Any]
    ) -> bytes:
        """§7.1 session creation: a new stream (XEP-0206 §4), answered with the session's
        parameters and the stream features."""
        rid = self._rid(attrs)
        to = attrs.get("to", "")
        if not to:
            raise BindingError("improper-addressing")
        try:
            wait = min(float(attrs.get("wait", self.max_wait)), self.max_wait)
            hold = min(int(attrs.get("hold", "1")), MAX_HOLD)
        except ValueError:
            raise BindingError("bad-request") from None
        if wait < 0 or hold < 0:
            raise BindingError("bad-request")
        client = self.http.client(request)
        sid = secrets.token_urlsafe(18)
        session = BoshSession(self, sid, to, rid + 1, wait, max(hold, 1), client)
        self.sessions[sid] = session
        connection = accept(self.server, connection_type=BoshConnection)
        assert isinstance(connection, BoshConnection)
        connection.refuse_tls_hello = False
        session.connection = connection
        encrypted = self.http.secure(request) or self.secure_anyway
        log.info(
            "c2s %s: BOSH session%s",
            client.peer,
            " (encrypted)" if encrypted else " (not encrypted)",
        )
        connection.opened(session, client, encrypted)
        loop = asyncio.get_running_loop()
        held = Held(rid, loop.create_future())
        held.attrs = {
            "sid": sid,
            "wait": f"{wait:g}",
            "requests": str(session.window),
            "hold": str(session.hold),
            "inactivity": f"{self.inactivity:g}",
            "polling": "1",
            "ver": VERSION,
            "from": to,
            "xmlns:xmpp": NS_XBOSH,
            "xmpp:version": "1.0",
            "xmpp:restartlogic": "true",
            "xmlns:stream": ns.STREAMS,
        }
        session.held.append(held)
        header = session._header_attrs(attrs)
        connection.deliver([*connection.stream_header(header), *events])
        if not held.answer.done():
            # The features are written at the end of this turn of the loop (XEP-0206 §4:
            # they come in the creation response).
            held.timer = loop.call_later(wait, session._timed_out, held)
        return await held.answer

    def stop(self) -> None:
        for session in list(self.sessions.values()):
            session._end(None)
