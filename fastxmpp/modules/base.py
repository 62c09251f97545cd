"""The control plane's building block: one `Module` per protocol concern (roster, presence,
offline storage, disco, ...), and the `ModuleHub` that starts them and fans server events out
to them.

A module talks to the compiled core through small interfaces only:

- `router.set_iq_handler(namespace, handler)` for iq get/set to the server or to an account's
  bare JID; the handler returns the reply bytes (or None) and raises `StanzaError` for an
  error reply: the stream turns it into the error stanza (one place, fastxmpp.errors).
- Handlers at the stages of the stanza pipeline (`hub.hook(module, stage, handler)`), run by
  the router in the order fastxmpp/pipeline.py writes down.
- Events from the hub: `session_bound`, `session_ended`, `account_removed`, and the stream
  features a stream offers.
- Storage: each module keeps its records behind a store of its own in fastxmpp/storage/, which
  registers a purge function with fastxmpp.storage.account_data.

Sessions are `fastxmpp.stream.c2s.C2SStream` objects (a `_router.Session`). A module keeps
per-session state in a record it declares (a small typed class and its
`fastxmpp.records.RecordSlot`), never in attributes set on the session (it has none to
spare: its attributes are declared); another module's per-session data is asked of that
module's documented methods (e.g. `presence.last_presence(session)`).

Modules from other packages (docs/MODULES.md) use the same interface, plus: their settings
(`self.options`, the [modules.<name>] table, checked by `check_options`), their place at the
pipeline stages they hook (`pipeline_places`), and a store of their own (`open_store()`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from xml.sax.saxutils import quoteattr

from ..errors import StanzaError, drop_tracebacks
from ..pipeline import Pipeline
from ..storage.lmdb_store import StorageFull
from ..storage.module_store import ModuleStore

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..metrics import Figure
    from ..server import Server
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.modules")
T = TypeVar("T")


def iq_result(origin: C2SStream, st: Stanza, payload: str = "") -> bytes:
    """The result to an iq the server answers: from what the request was sent to."""
    attrs = (
        "type='result' id=" + quoteattr(st.attrs.get("id", "")) + " to=" + quoteattr(origin.full)
    )
    answering = st.attrs.get("to")
    if answering:
        attrs += " from=" + quoteattr(answering)
    return f"<iq {attrs}>{payload}</iq>".encode()


def answer_once_stored(
    origin: C2SStream,
    st: Stanza,
    committed: asyncio.Future[T],
    stored: Callable[[T], bytes],
    refused: Callable[[Exception], StanzaError | None] = lambda exc: None,
) -> None:
    """Answer the iq `st` once the change it made is on disk (`committed`: a store's
    `later`): `stored(what the change returned)` sends what follows from it and makes the
    answer. Nothing acknowledges the change before it is stored, and the event loop serves
    everyone else while it commits; this stream's later input waits, so its next request
    sees the change. A change the store refused raises: `refused(exc)` is the error to
    answer with (None: not an expected refusal); a full disk is resource-constraint
    (RFC 6120 §8.3.3.18)."""

    async def answer() -> bytes:
        try:
            result = await committed
        except Exception as exc:
            # This frame holds `committed`, which holds exc: without the traceback that
            # refers to this frame, both go by refcount, not by a full collection.
            drop_tracebacks(exc)
            if isinstance(exc, StorageFull):
                raise StanzaError("resource-constraint", "the server's storage is full") from None
            raise refused(exc) or exc from None
        return stored(result)

    origin.run_iq_step(st, answer)


def sender_account(origin: C2SStream) -> tuple[str, str, str, str]:
    """The target of an iq without 'to': RFC 6120 §10.3.3 has the server handle it on behalf
    of the sending account, as if sent to its bare JID (local, domain, no resource, bare)."""
    return (origin.local, origin.domain, "", origin.bare)


class ModuleLoadError(Exception):
    """A module the server needs cannot be imported or started: the installation is
    incomplete or broken, or a module from another package is not installed. The server does
    not start without it (a missing feature must not pass for a working server)."""


class Module:
    """Base class: override what the concern needs; every hook has a harmless default."""

    name: ClassVar[str] = ""
    # XEP-0030 features this module adds to the server's disco#info.
    features: ClassVar[tuple[str, ...]] = ()
    # XEP-0030 identities (category, type) it adds there, after the server's own.
    identities: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Features added to the disco#info the server answers for an account's bare JID.
    account_features: ClassVar[tuple[str, ...]] = ()
    # A module from another package: its place (priority) at each pipeline stage it hooks,
    # among the built-in modules' places in fastxmpp.pipeline.ORDER (higher runs first).
    # Built-in modules have theirs in ORDER itself.
    pipeline_places: ClassVar[dict[str, int]] = {}

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self.router = server.router
        self.hub: ModuleHub = server.modules
        # The module's [modules.<name>] table (modules from other packages; checked by
        # check_options when the configuration was read).
        self.options: dict[str, Any] = dict(self.config.modules.options.get(self.name, {}))

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> list[str]:
        """The problems of the module's [modules.<name>] table, one message each (shown by
        `fastxmpp check-config` and `serve`, which refuses to start). By default a module
        takes no options."""
        return [f"unknown key {key}" for key in options]

    def open_store(self) -> ModuleStore:
        """The module's own store: records per account, committed when each call returns,
        deleted with the account (fastxmpp/storage/module_store.py)."""
        assert self.server.storage is not None
        return ModuleStore(self.server.storage, self.name)

    def start(self) -> None:
        """Register iq handlers and claim hooks; open the module's store."""

    def stop(self) -> None:
        """The server is shutting down (sessions are still there, storage still open)."""

    def session_bound(self, session: C2SStream) -> None:
        """A resource was bound (RFC 6120 §7)."""

    def session_ended(self, session: C2SStream) -> None:
        """A bound session is gone (closed, replaced or lost); it has left the router."""

    def initial_presence(self, session: C2SStream) -> None:
        """The session just sent its initial presence (RFC 6121 §4.2), after the presence
        module has broadcast it and probed the contacts: offline messages go out here."""

    def presence_available(self, session: C2SStream, st: Stanza) -> None:
        """The session broadcast available presence `st` (initial or an update, after the
        presence module has handled it): XEP-0115 caps in it matter to PEP."""

    def presence_visibility_changed(self, user: str, contact: str, visible: bool) -> None:
        """Bare JID `user` may now (`visible`) or no longer see the presence of bare JID
        `contact` (RFC 6121 §3.1.5, §3.2.2, §3.3.2). One of them is local: a `user` on
        another server hears of it from its own server, this one tells its modules."""

    def presence_unavailable(self, session: C2SStream, data: bytes) -> None:
        """The session broadcast unavailable presence (`data`, stamped with its full JID) and
        stays connected (RFC 6121 §4.5.2): services it sent directed presence to (rooms,
        §4.6.3) treat it as gone. A session that closes ends with session_ended instead."""

    def stream_features(self, stream: C2SStream) -> str:
        """XML of stream features for `stream` (called for every features element sent:
        look at `stream.encrypted`, `stream.authenticated_local`, `stream.bound`)."""
        return ""

    def pre_auth_iq(self, stream: C2SStream, st: Any) -> bytes | None:
        """An iq on a stream that has not authenticated yet, for a namespace this module
        owns in c2s.PRE_AUTH_IQ (registration, non-SASL auth). Slow work (password hashing)
        goes through `stream.run_iq_step(st, step)`."""
        return None

    def http_routes(self) -> list[tuple[str, str, Any]]:
        """(method, path, aiohttp handler) of each HTTP endpoint the module serves on the
        server's http listeners (collected once, when the HTTP application is built, after
        every module has started; none without an http listener). Paths are aiohttp
        resource paths ("/upload/{file_id}/{filename}")."""
        return []

    def metrics(self) -> list[Figure]:
        """The module's figures for /metrics (fastxmpp/metrics.py), read at each scrape."""
        return []

    def account_removed(self, domain: str, local: str) -> None:
        """The account and its stored data are gone (fastxmpp.storage.account_data purged
        them in one transaction); drop what the module caches for it."""


class ModuleHub:
    """The loaded modules, in start order, and the fan-out of server events."""

    def __init__(self, server: Server | None = None) -> None:
        self.server = server
        self.modules: dict[str, Module] = {}
        # The stanza pipeline of the server's router (set by the server before loading).
        self.pipeline: Pipeline | None = None
        # Server-originated iqs waiting for an answer: (full JID, id) -> future.
        self._waiting: dict[tuple[str, str], asyncio.Future[Any]] = {}

    def load(self, modules: Iterable[Module]) -> None:
        for module in modules:
            if module.name in self.modules:
                raise ValueError(f"module {module.name} loaded twice")
            self.modules[module.name] = module
            for stage, priority in module.pipeline_places.items():
                try:
                    self.attach(module.router).place(module.name, stage, priority)
                except ValueError as exc:
                    raise ModuleLoadError(f"module {module.name}: {exc}") from exc
        for module in self.modules.values():
            try:
                module.start()
            except Exception as exc:
                log.exception("module %s failed to start", module.name)
                raise ModuleLoadError(
                    f"module {module.name} failed to start: {type(exc).__name__}: {exc}"
                ) from exc

    def get(self, name: str) -> Any:
        """The module called `name`, or None when it is not loaded."""
        return self.modules.get(name)

    def attach(self, router: Any) -> Pipeline:
        """The pipeline of `router`, which this hub's modules hook (made once)."""
        if self.pipeline is None or self.pipeline.router is not router:
            self.pipeline = Pipeline(router)
        return self.pipeline

    def hook(self, module: Module, stage: str, handler: Callable[..., Any]) -> None:
        """`module`'s handler at a pipeline stage, in the place fastxmpp.pipeline.ORDER
        gives the module there."""
        self.attach(module.router).hook(module.name, stage, handler)

    def unhook(self, module: Module, stage: str) -> None:
        self.attach(module.router).unhook(module.name, stage)

    def hooked(self, module: Module, stage: str) -> bool:
        return self.attach(module.router).hooked(module.name, stage)

    def server_features(self) -> list[str]:
        return sorted({f for m in self.modules.values() for f in m.features})

    def server_identities(self) -> list[tuple[str, str]]:
        return sorted({i for m in self.modules.values() for i in m.identities})

    def account_features(self) -> list[str]:
        return sorted({f for m in self.modules.values() for f in m.account_features})

    def stream_features(self, stream: C2SStream) -> str:
        return "".join(m.stream_features(stream) for m in self.modules.values())

    def _each(self, event: str, *args: Any) -> None:
        # One module's bug must not keep the others from hearing of the event.
        for module in self.modules.values():
            try:
                getattr(module, event)(*args)
            except Exception:
                log.exception("module %s failed in %s", module.name, event)

    def session_bound(self, session: C2SStream) -> None:
        self._each("session_bound", session)

    def initial_presence(self, session: C2SStream) -> None:
        self._each("initial_presence", session)

    def presence_available(self, session: C2SStream, st: Stanza) -> None:
        self._each("presence_available", session, st)

    def presence_visibility_changed(self, user: str, contact: str, visible: bool) -> None:
        self._each("presence_visibility_changed", user, contact, visible)

    def presence_unavailable(self, session: C2SStream, data: bytes) -> None:
        self._each("presence_unavailable", session, data)

    # --- iqs the server sends to clients -------------------------------------------------

    def send_iq(
        self, session: Any, itype: str, payload: str, frm: str | None = None
    ) -> asyncio.Future[Any]:
        """Send <iq type=itype> with `payload` (XML) from the server (or from local JID
        `frm`) to a bound session, or to anything with a session's `full` and `send` (PEP's
        remote resources); the future gets the answering Stanza (result or error). The
        caller sets a timeout."""
        iq_id = "fx-" + secrets.token_hex(8)
        data = (
            f"<iq type='{itype}' id='{iq_id}' from={quoteattr(frm or session.domain)} "
            f"to={quoteattr(session.full)}>{payload}</iq>"
        ).encode()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        key = (session.full, iq_id)
        self._waiting[key] = future
        future.add_done_callback(lambda _f: self._waiting.pop(key, None))
        session.send(data)
        return future

    def request(self, frm: str, to: str, payload: str) -> asyncio.Future[Any] | None:
        """Send <iq type='set'> with `payload` from local JID `frm` to a JID of a component
        or another server (an XEP-0357 app server); the future gets the answering Stanza.
        None when `to` cannot be reached from here (no component, federation off)."""
        iq_id = "fx-" + secrets.token_hex(8)
        data = (
            f"<iq type='set' id='{iq_id}' from={quoteattr(frm)} to={quoteattr(to)}>{payload}</iq>"
        ).encode()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        key = (to, iq_id)
        self._waiting[key] = future
        future.add_done_callback(lambda _f: self._waiting.pop(key, None))
        if not self.deliver_out(data, to):
            future.cancel()
            return None
        return future

    def deliver_out(self, data: bytes, to: str) -> bool:
        """Bytes for a JID that is not a local account's: to a component, or to another
        server. False when there is no way there."""
        server = self.server
        if server is None:
            return False
        domain = to.rpartition("@")[2].partition("/")[0]
        components = server.components
        if components is not None and components.deliver(data, domain):
            return True
        if server.s2s is not None and server.config.s2s.enabled:
            server.s2s.deliver(data, to)
            return True
        return False

    def iq_response(self, session: C2SStream, st: Any) -> None:
        """At "iq/response": a result/error iq addressed to the server."""
        future = self._waiting.get((session.full, st.attrs.get("id")))
        if future is not None and not future.done():
            future.set_result(st)

    def session_ended(self, session: C2SStream) -> None:
        self._each("session_ended", session)

    # --- what the stream layer asks of modules (stream/ imports no module) -----------------

    def carbon_copied_to(
        self, session: C2SStream, mtype: str, children: list[tuple[str, str]], sent_at: float
    ) -> list[C2SStream]:
        """The account's other sessions that got a XEP-0280 copy of a message of type
        `mtype` (with these children) delivered to `session` at `sent_at`; none without
        the carbons module. XEP-0198 §4: a stanza the session never acknowledged is not
        sent to them again."""
        carbons = self.get("carbons")
        if carbons is None:
            return []
        copied: list[C2SStream] = carbons.copied_to(session, mtype, children, sent_at)
        return copied

    def store_unacknowledged(
        self, domain: str, local: str, messages: list[tuple[bytes, str | None]]
    ) -> int:
        """XEP-0198 §4: messages a session never acknowledged, to offline storage (each: the
        bytes, and the time for its <delay/> or None). How many were stored, oldest first;
        0 without the offline module."""
        offline = self.get("offline")
        if offline is None:
            return 0
        stored: int = offline.store_unacknowledged(domain, local, messages)
        return stored

    def stop(self) -> None:
        self._each("stop")

    def account_removed(self, domain: str, local: str) -> None:
        self._each("account_removed", domain, local)
