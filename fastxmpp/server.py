"""Assembles a running server from a `Config`: storage, TLS contexts, the router, modules and
listeners; reloads its certificates and log level on SIGHUP; and takes it down again on
SIGTERM/SIGINT (system-shutdown to every stream)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import resource
import signal
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from . import __version__, descriptors, errors
from ._router import Router
from .certs import check_certificate, ensure_certificate, not_valid_after
from .config import Config, ConfigError, load_config
from .descriptors import DescriptorWatch
from .jid import parse_jid
from .memory import FrozenSurvivors, HeapTrimmer, ParserHibernation
from .metrics import Counts
from .modules import ModuleLoadError, configured_modules
from .modules.base import ModuleHub
from .storage.accounts import AccountStore
from .storage.lmdb_store import DataDirLocked, SchemaTooNew, ServerLock, Storage
from .stream import channel_binding
from .stream.c2s import C2SStream, accept
from .stream.component import ComponentDomainTaken, Components, is_loopback
from .stream.component import accept as accept_component
from .stream.s2s import S2S
from .stream.s2s import accept as accept_server
from .stream.sasl2 import NS_FAST
from .stream.throttle import AuthThrottle
from .stream.tls import ALPN_CLIENT, HANDSHAKE_TIMEOUT, DirectTLS

if TYPE_CHECKING:
    from .http.server import HttpService

# RFC 7301: what HTTPS listeners answer in ALPN (no HTTP/2 here).
ALPN_HTTP = "http/1.1"

log = logging.getLogger("fastxmpp.server")
T = TypeVar("T")
# Pending connections the kernel queues per listener (capped by net.core.somaxconn): a burst
# of reconnecting clients after a restart must not be dropped into SYN retransmits.
LISTEN_BACKLOG = 1024
# sysexits.h EX_IOERR: the exit code after a fatal storage error.
EXIT_STORAGE_FAILED = 74
# A certificate that ends sooner is named in a warning at start and at each reload.
EXPIRY_WARNING = datetime.timedelta(days=14)


def make_tls_context(cert: str, key: str) -> ssl.SSLContext:
    """Server-side TLS: TLS 1.2 or newer, the stdlib's secure defaults (RFC 7590)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    channel_binding.remember_certificate(context, cert)  # tls-server-end-point (RFC 5929)
    return context


class Server:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.streams: set[C2SStream] = set()
        self.unauthenticated_per_ip: Counter[str] = Counter()  # c2s, not yet authenticated
        limits = config.limits
        self.auth_throttle = AuthThrottle(
            limits.auth_free_failures,
            limits.auth_failures_per_ip,
            limits.auth_failures_per_account,
            limits.auth_failure_window,
        )
        self.background: set[asyncio.Task[Any]] = set()
        self.counts = Counts()  # logins (/metrics)
        self.heap_trimmer = HeapTrimmer(limits.heap_trim_delay)
        self.frozen_survivors = FrozenSurvivors(limits.gc_full_interval)
        self.parser_hibernation = ParserHibernation(
            self.streams, config.c2s.hibernate_after, self.heap_trimmer
        )
        # Each host's STARTTLS context (c2s, and s2s without a ca_file) and certificate files;
        # both replaced on SIGHUP (`reload`), as are the direct TLS listeners' contexts.
        self.tls_contexts: dict[str, ssl.SSLContext] = {}
        self.certificates: dict[str, tuple[str, str]] = {}  # host -> (cert, key) paths
        self.direct_tls: list[DirectTLS] = []
        self._serving = False
        self.s2s: S2S | None = None
        self.components: Components | None = None
        self.http: HttpService | None = None  # with an http listener
        self.listeners: list[asyncio.AbstractServer] = []
        self.addresses: list[tuple[str, int]] = []
        self.lock = ServerLock(config.data_dir)
        self.storage: Storage | None = None
        self.accounts: AccountStore
        self.router: Router
        self.modules = ModuleHub(self)
        self._stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self.exit_code = 0

    async def start(self) -> None:
        config = self.config
        self.lock.acquire()
        try:
            self.storage = Storage(config.data_dir, config.storage.map_size)
            loop_thread = threading.get_ident()
            running_loop = asyncio.get_running_loop()

            def storage_failed(reason: str) -> None:
                # The archive commits in a thread of its own (GroupCommitWriter).
                if threading.get_ident() == loop_thread:
                    self.storage_failed(reason)
                else:
                    running_loop.call_soon_threadsafe(self.storage_failed, reason)

            self.storage.on_failure = storage_failed
            self.accounts = AccountStore(self.storage, config.storage.scram_iterations)
            self._use_certificates(host_certificates(config, config.data_dir))
            loop = asyncio.get_running_loop()
            self.router = Router(loop, parse_jid)
            self.router.user_exists = self.accounts.exists
            if log.isEnabledFor(logging.DEBUG):
                self.router.tracer = trace_stanzas
            for name in config.hosts:
                self.router.add_host(name)
            self.modules.attach(self.router).hook("hub", "iq/response", self.modules.iq_response)
            if config.s2s.enabled or any(lst.kind == "s2s" for lst in config.listeners):
                self.s2s = S2S(self)
            # XEP-0086: the errors module's one switch, set before any stream exists.
            errors.set_legacy_codes(config.legacy.error_codes)
            self.modules.load(cls(self) for cls in configured_modules(config))
            # XEP-0114: stanzas for the components' domains go to them through the router's
            # remote_hook (for one that is not connected: service-unavailable).
            self.components = Components(self)
            direct_tls: DirectTLS | None = None
            https: DirectTLS | None = None
            if any(lst.kind == "http" for lst in config.listeners):
                from .http.server import HttpService  # aiohttp only where HTTP is served

                self.http = HttpService(self)
                await self.http.start()
            for listener in config.listeners:
                factory: Callable[[], asyncio.BaseProtocol] = partial(accept, self)
                label = listener.kind
                tls_context: ssl.SSLContext | None = None
                if listener.kind == "http":
                    assert self.http is not None
                    factory = self.http.protocol_factory()
                    if listener.tls == "direct":
                        if https is None:
                            https = self._direct_tls(ALPN_HTTP)
                        tls_context = https.initial
                        label = "https"
                elif listener.kind == "s2s":
                    assert self.s2s is not None
                    factory = partial(accept_server, self.s2s)
                elif listener.kind == "component":
                    factory = partial(accept_component, self.components)
                    if not is_loopback(listener.address):
                        log.warning(
                            "component listener on %s: XEP-0114 streams are not encrypted;"
                            " keep them on loopback or a private network",
                            listener.address,
                        )
                elif listener.tls == "direct":
                    if direct_tls is None:
                        # XEP-0368: contexts of their own (ALPN, SNI), the same certificates.
                        direct_tls = self._direct_tls()
                    # XEP-0368: the connection runs the handshake itself (ServerTLS), from
                    # its first byte, before the stream sees any.
                    factory = partial(accept, self, direct_tls.initial)
                    label = "c2s (direct TLS)"
                    tls_context = None
                server = await loop.create_server(
                    factory,
                    listener.address,
                    listener.port,
                    reuse_address=True,
                    backlog=LISTEN_BACKLOG,
                    # HTTPS: the loop's TLS (aiohttp's transport); XEP-0368 c2s listeners run
                    # the handshake in the connection itself (ServerTLS).
                    ssl=tls_context,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls_context else None,
                )
                self.listeners.append(server)
                for sock in server.sockets:
                    address = sock.getsockname()[:2]
                    self.addresses.append(address)
                    if listener.kind == "http":
                        assert self.http is not None
                        self.http.bound.append((address[0], address[1], tls_context is not None))
                    log.info("%s listening on %s:%d", label, address[0], address[1])
        except BaseException:
            self._close_storage()
            raise
        self.parser_hibernation.start()
        self.frozen_survivors.start()
        # After raise_open_files_limit: the limit the watch warns before is the raised one.
        descriptors.watch = DescriptorWatch()
        self._serving = True
        log.info(
            "fastxmpp %s serving %s (data in %s)",
            __version__,
            ", ".join(config.hosts),
            config.data_dir,
        )

    def _direct_tls(self, alpn: str = ALPN_CLIENT) -> DirectTLS:
        listener = DirectTLS(
            {host: make_tls_context(*paths) for host, paths in self.certificates.items()}, alpn
        )
        self.direct_tls.append(listener)
        return listener

    def _use_certificates(self, pairs: dict[str, tuple[str, str]], reload: bool = False) -> None:
        """These hosts' certificate and key files, in new TLS contexts for every kind of
        listener: connections from now on get them, open ones keep what they started with
        (and the tls-server-end-point binding of their context, RFC 5929). `reload`: each
        is named in the log with its end of validity."""
        now = datetime.datetime.now(datetime.UTC)
        for host, (cert, key) in pairs.items():
            self.tls_contexts[host] = make_tls_context(cert, key)
            self.certificates[host] = (cert, key)
            until = not_valid_after(cert)
            if reload:
                log.info(
                    "reload: certificate of %s from %s%s",
                    host,
                    cert,
                    "" if until is None else f", valid until {until:%Y-%m-%d %H:%M} UTC",
                )
            if until is not None and until - now < EXPIRY_WARNING:
                log.warning(
                    "the certificate of %s (%s) expires on %s",
                    host,
                    cert,
                    f"{until:%Y-%m-%d %H:%M} UTC",
                )
        for listener in self.direct_tls:
            listener.update({host: make_tls_context(*pairs[host]) for host in pairs})
        if self.s2s is not None:
            self.s2s.certificates_changed()

    def reload(self) -> None:
        """SIGHUP: read the configuration file again. The hosts' certificate and key files are
        loaded anew (a renewed certificate is served without a restart: Let's Encrypt's
        last 90 days) and the log level is set; every other change is named in the log and
        takes effect at the next start. A configuration with problems changes nothing."""
        if not self._serving:
            log.warning("reload: the server is still starting or already stopping; ignored")
            return
        try:
            new = load_config(self.config.source, check_files=True)
        except ConfigError as exc:
            log.error("reload: nothing changed, the configuration has problems:\n%s", exc)
            return
        pairs = {
            host: paths
            # self-signed ones where the running server keeps them (a new data_dir waits)
            for host, paths in host_certificates(new, self.config.data_dir).items()
            if host in self.config.hosts
        }
        for host, (cert, key) in pairs.items():
            # (configured files were checked by load_config; self-signed ones are here)
            problem = check_certificate(Path(cert), Path(key))
            if problem is not None:
                log.error("reload: nothing changed, %s: %s", host, problem)
                return
        set_log_level(new.log_level)
        self.router.tracer = trace_stanzas if log.isEnabledFor(logging.DEBUG) else None
        self._use_certificates(pairs, reload=True)
        for what in restart_only_changes(self.config, new):
            log.warning("reload: %s changed; that takes effect at the next start", what)
        log.info("reload: done (log level %s)", new.log_level)

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run CPU-heavy or blocking work (password hashing) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    def session_bound(self, stream: C2SStream) -> None:
        self.modules.session_bound(stream)

    def session_ended(self, stream: C2SStream) -> None:
        """A bound session went away: it has left the router already."""
        self.modules.session_ended(stream)

    def remove_account(self, domain: str, local: str) -> None:
        """Delete an account with all its data, and end its sessions (XEP-0077 §3.2): every
        stream authenticated as it, bound or not, gets a not-authorized stream error after
        what is already queued for it (the removing session's iq result goes out first)."""
        self.accounts.delete(domain, local)
        self.end_sessions(domain, local, "not-authorized", "the account was removed")
        self.modules.account_removed(domain, local)

    def end_sessions(self, domain: str, local: str, condition: str, text: str) -> int:
        """End every stream authenticated as local@domain, bound or not (and sessions waiting
        for XEP-0198 resumption) with a stream error; how many there were."""
        ending = list(self.router.resources(f"{local}@{domain}").values())
        ending += [
            stream
            for stream in self.streams
            if stream.authenticated_local == local
            and stream.host == domain
            and not stream.closing
            and stream not in ending
        ]
        for stream in ending:
            stream.close_with_error(condition, text)
        return len(ending)

    async def stop(self) -> None:
        log.info("shutting down: system-shutdown to %d streams", len(self.streams))
        for server in self.listeners:
            server.close()
        self.modules.stop()
        if self.storage is not None:
            # The changes handed to the writer commit now, and the requests that made them
            # are answered (a few loop iterations: the future, then the request's step)
            # before the streams close below.
            self.storage.stop_writer()
            for _ in range(4):
                await asyncio.sleep(0)
        if self.s2s is not None:
            self.s2s.stop()
        if self.components is not None:
            self.components.stop()
        for stream in list(self.streams):
            stream.close_with_error("system-shutdown", "the server is shutting down")
        if self.http is not None:
            await self.http.stop()  # WebSockets closed above; other requests get a moment
        for server in self.listeners:
            await server.wait_closed()
        # Give transports a moment to flush their closing tags.
        for _ in range(50):
            if not self.streams:
                break
            await asyncio.sleep(0.02)
        for task in list(self.background):
            task.cancel()
        self.heap_trimmer.stop()
        self.frozen_survivors.stop()
        self.parser_hibernation.stop()
        if descriptors.watch is not None:
            descriptors.watch.stop()
            descriptors.watch = None
        # What the streams closed above left for the turn's end (their logout times, in one
        # transaction), in case no turn has ended since.
        self.router.end_turn()
        self._close_storage()
        self._stopped.set()

    def _close_storage(self) -> None:
        if self.storage is not None:
            self.storage.close()
            self.storage = None
        self.lock.release()

    def request_stop(self) -> None:
        """Stop as on SIGTERM (an administrator's XEP-0133 shutdown command)."""
        self._stop_requested.set()

    def storage_failed(self, reason: str) -> None:
        """The storage can no longer be trusted: stop serving (every stream gets
        system-shutdown, nothing more is acknowledged) and exit with EX_IOERR, so that a
        supervisor sees a failure rather than a clean stop (docs/SECURITY.md)."""
        log.critical("stopping: %s", reason)
        self.exit_code = EXIT_STORAGE_FAILED
        self._stop_requested.set()

    async def serve_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_requested.set)
        # Before start: a SIGHUP while starting must not end the process (its default).
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        await self._stop_requested.wait()
        self._serving = False
        await self.stop()


def trace_stanzas(session: C2SStream, data: bytes, incoming: bool) -> None:
    """Debug-level trace of every byte in and out (never at info: it carries messages),
    except output with a XEP-0484 token, which is as good as a password (input that may
    carry one is hidden by the stream, stream/c2s.py)."""
    if not incoming and FAST_TOKEN_MARKER in data:
        data = f"[{len(data)} bytes not shown: may carry a FAST token]".encode()
    trace_log.debug(
        "%s %s %s",
        session.full or session.peer,
        "<<<" if incoming else ">>>",
        data.decode(errors="replace"),
    )


trace_log = logging.getLogger("fastxmpp.trace")
FAST_TOKEN_MARKER = f"<token xmlns='{NS_FAST}'".encode()


def setup_logging(level: str) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_log_level(level)


def set_log_level(level: str) -> None:
    logging.getLogger().setLevel(logging.getLevelNamesMapping().get(level.upper(), logging.INFO))


def host_certificates(config: Config, data_dir: Path) -> dict[str, tuple[str, str]]:
    """Each host's certificate and key files: the configured ones, else a self-signed pair
    under data_dir/certs (made on first start)."""
    pairs = {}
    for name, host in config.hosts.items():
        if host.cert is not None and host.key is not None:
            pairs[name] = (str(host.cert), str(host.key))
        else:
            cert, key = ensure_certificate(name, data_dir / "certs")
            log.info("using self-signed certificate %s for %s", cert, name)
            pairs[name] = (str(cert), str(key))
    return pairs


# How the file names each Config field that is not a table of its own name.
FIELD_NAMES = {
    "data_dir": "[server] data_dir",
    "admins": "[server] admins",
    "listeners": "[[listeners]]",
    "hosts": "the list of hosts",
}


def restart_only_changes(running: Config, loaded: Config) -> list[str]:
    """What differs between two configurations beyond what a reload applies (the hosts'
    certificate files, the log level), each named as in the file."""
    changed = []
    for entry in dataclasses.fields(Config):
        name = entry.name
        if name in ("log_level", "source"):
            continue
        before, after = getattr(running, name), getattr(loaded, name)
        if name == "hosts":
            before, after = set(before), set(after)  # the files are reloaded
        if before != after:
            changed.append(FIELD_NAMES.get(name, f"[{name}]"))
    return changed


def raise_open_files_limit() -> None:
    """Every connection holds a file descriptor, and the usual soft limit (1024) is far below
    the connections a server is expected to hold: raise the soft RLIMIT_NOFILE to the hard
    limit, as the operator allowed, and log what we have. (Without it, accept() fails with
    EMFILE near 1000 clients and new connections are refused.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
        else:
            log.info("open files limit raised from %d to %d (the hard limit)", soft, hard)
            return
    log.info("open files limit: %s (hard limit %s)", _rlimit(soft), _rlimit(hard))


def _rlimit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def run(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT; the process exit code."""
    setup_logging(config.log_level)
    raise_open_files_limit()
    server = Server(config)
    try:
        uvloop.run(server.serve_until_signalled())
    except (DataDirLocked, ModuleLoadError, SchemaTooNew, ComponentDomainTaken) as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return server.exit_code
