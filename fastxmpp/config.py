"""TOML configuration: parsed into frozen dataclasses, every problem reported with its line.

`load_config` raises `ConfigError` listing all problems found; `check_config` returns them.
tomllib gives positions only for syntax errors, so `_KeyPositions` finds where each table and
key was written by scanning the source text.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .certs import check_certificate
from .jid import JIDError, normalize_domain, parse_jid

log = logging.getLogger("fastxmpp.config")

DEFAULT_TOML = """\
[server]
data_dir = "var"
log_level = "info"

[[listeners]]
kind = "c2s"
address = "127.0.0.1"
port = 5222

[[listeners]]
kind = "http"
address = "127.0.0.1"
port = 5280

[[listeners]]
kind = "http"
address = "127.0.0.1"
port = 5281
tls = "direct"

[hosts.localhost]
"""

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LISTENER_KINDS = ("c2s", "s2s", "http", "component")
# How a listener starts TLS: RFC 6120 §5 STARTTLS, or direct TLS at connect (XEP-0368 for
# c2s, HTTPS for http); "none" for plain HTTP (WebSocket and BOSH behind a TLS proxy) and
# for XEP-0114 components (which have no TLS).
LISTENER_TLS_MODES = ("starttls", "direct", "none")
RESOURCE_CONFLICT_POLICIES = ("replace", "reject", "rename")  # RFC 6120 §7.7.2.2
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
C2S_PORT = 5222  # RFC 6120 §14.7
S2S_PORT = 5269  # RFC 6120 §14.7
DIRECT_TLS_PORT = 5223  # XEP-0368: the port operators publish in _xmpps-client._tcp records
COMPONENT_PORT = 5347  # XEP-0114: the port servers usually accept components on
HTTP_PORT = 5280  # what Prosody and ejabberd serve HTTP (WebSocket, BOSH) on
HTTPS_PORT = 5281
# RFC 5802 §5.1 and RFC 7677 §4: SCRAM iteration counts of at least 4096.
MIN_SCRAM_ITERATIONS = 4096
# RFC 6120 §13.12: a server must accept stanzas of at least 10000 bytes.
MIN_STANZA_SIZE = 10000


@dataclass(frozen=True)
class HostConfig:
    name: str
    # None: a self-signed certificate is created under data_dir/certs on first start.
    cert: Path | None
    key: Path | None


@dataclass(frozen=True)
class ComponentConfig:
    """One XEP-0114 external component: the domain it serves and its shared secret."""

    domain: str
    secret: str


@dataclass(frozen=True)
class ListenerConfig:
    # "c2s" (clients), "s2s" (other servers, RFC 6120 §13), "http" (WebSocket, BOSH) or
    # "component" (XEP-0114)
    kind: str
    address: str
    port: int
    # "starttls" (RFC 6120 §5) or "direct": XEP-0368 TLS from the first byte (c2s only);
    # "none" or "direct" (HTTPS) for http listeners.
    tls: str = "starttls"


@dataclass(frozen=True)
class C2SConfig:
    require_encryption: bool = True
    resource_conflict: str = "replace"  # "replace" | "reject" | "rename" (RFC 6120 §7.7.2.2)
    max_sasl_failures: int = 3
    auth_timeout: float = 60.0
    sasl_mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
    hibernate_after: float = 10.0  # silent this long: the stream's parser frees its memory
    fast_token_lifetime: float = 1209600.0  # XEP-0484 tokens last 14 days; 0: no FAST
    # SCRAM-*-PLUS offered over the stream's own TLS (RFC 5802 §6, XEP-0440)
    channel_binding: bool = True


@dataclass(frozen=True)
class LimitsConfig:
    max_stanza_size: int = 262144
    max_depth: int = 64
    max_attributes: int = 64  # per element, namespace declarations included
    # Elements in one stanza, itself included: a full privacy list (1000 items with their
    # four kinds) is about 5000, a large XEP-0049 bookmarks store a few thousand.
    max_elements: int = 8192
    # c2s connections from one address that have not authenticated yet; authenticated ones
    # are bounded per account (max_resources_per_account), so a NAT is not refused at its
    # 65th user. Formerly max_connections_per_ip, which counted every connection.
    max_unauthenticated_per_ip: int = 64
    max_resources_per_account: int = 16  # bound sessions of one account (RFC 6120 §7.6.2.1)
    max_bytes_per_second: int = 131072  # sustained input per session; 0: unlimited
    burst_bytes: int = 524288  # input a session may send at once before pacing starts
    max_outbound_buffer: int = 1048576  # unsent output per session before it is closed
    auth_free_failures: int = 3  # failed logins answered at once; then back-off doubles
    auth_failures_per_ip: int = 30  # within auth_failure_window: the address is refused
    auth_failures_per_account: int = 10  # within auth_failure_window: the account is refused
    auth_failure_window: float = 600.0  # seconds over which failures are counted
    # What "one address" is for the per-address limits above, [register] and [s2s]: an IPv6
    # client is one network of this prefix length (one subscriber gets a /64 or more, and
    # could otherwise take a new address for each connection); IPv4: the address.
    ipv6_prefix_length: int = 64
    heap_trim_delay: float = 1.0  # after connection churn, return freed memory; 0: never
    # seconds between full garbage collections over every object (memory.FrozenSurvivors);
    # 0: Python's own collector policy
    gc_full_interval: float = 3600.0


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP listeners: RFC 7395 WebSocket, XEP-0124/0206 BOSH, XEP-0156 discovery
    (docs/CONFIGURATION.md)."""

    max_connections: int = 1000  # open HTTP connections (all http listeners, WebSockets too)
    max_request_size: int = 1048576  # largest request body accepted (413 beyond)
    idle_timeout: float = 60.0  # seconds a connection may wait for (or between) requests
    access_log: bool = True  # one info line per request (logger fastxmpp.http.access)
    websocket: bool = True  # RFC 7395 at /xmpp-websocket
    # A WebSocket over plain HTTP is not encrypted: [c2s] require_encryption refuses to log
    # it in unless a trusted proxy says it took the request over HTTPS
    # (X-Forwarded-Proto: https) or this is set (a proxy that says nothing).
    consider_websocket_secure: bool = False
    bosh: bool = True  # XEP-0124/0206 at /http-bind
    bosh_max_wait: float = 60.0  # longest a BOSH request is held (the client's 'wait' capped)
    bosh_inactivity: float = 60.0  # a BOSH session nobody polls this long is over
    consider_bosh_secure: bool = False  # the same as consider_websocket_secure, for BOSH
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")  # X-Forwarded-For/-Proto read
    public_url: str = ""  # e.g. "https://chat.example.org": base of the XEP-0156 URLs
    # /metrics (Prometheus text format) for the clients in metrics_allow (networks); off by
    # default: a proxy that forwards it without X-Forwarded-For would show it to anyone.
    metrics: bool = False
    metrics_allow: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class StreamManagementConfig:
    """XEP-0198 acknowledgements and session resumption (docs/CONFIGURATION.md)."""

    enabled: bool = True  # offer <sm xmlns='urn:xmpp:sm:3'/> on authenticated streams
    resume_timeout: float = 300.0  # seconds a lost session waits to be resumed; 0: no resumption
    max_unacked_stanzas: int = 5000  # stanzas sent and not acknowledged; beyond: policy-violation
    max_unacked_bytes: int = 2097152  # their size in bytes; beyond: policy-violation
    ack_request_every: int = 5  # the server sends <r/> after this many stanzas
    # ... and this many seconds after the last message it sent, if that is unacknowledged
    # (0: never)
    ack_request_after: float = 5.0


@dataclass(frozen=True)
class CsiConfig:
    """XEP-0352 client state indication (docs/CONFIGURATION.md, [csi])."""

    enabled: bool = True  # offer <csi xmlns='urn:xmpp:csi:0'/>; hold stanzas while inactive
    max_held_stanzas: int = 100  # per inactive session; beyond it everything held goes out


@dataclass(frozen=True)
class StorageConfig:
    map_size: int = 1 << 30
    scram_iterations: int = 10000  # new credentials; older ones go up at a PLAIN login


@dataclass(frozen=True)
class RosterConfig:
    max_items: int = 1000  # RFC 6121 §2.1.4: a server may limit roster size


@dataclass(frozen=True)
class OfflineConfig:
    enabled: bool = True  # RFC 6121 §8.5.2.2.1 storage of chat/normal messages
    max_messages: int = 1000  # per account; beyond it the sender gets service-unavailable


@dataclass(frozen=True)
class PushConfig:
    """XEP-0357 push notifications (docs/CONFIGURATION.md, [push])."""

    enabled: bool = True  # accounts may register app servers (urn:xmpp:push:0)
    max_registrations: int = 10  # per account (one per device and app)
    include_body: bool = False  # the message body in the summary (seen by the app server)
    min_interval: float = 2.0  # seconds between two notifications to one registration
    timeout: float = 30.0  # seconds an app server has to answer a notification


@dataclass(frozen=True)
class MamConfig:
    enabled: bool = True  # XEP-0313 user archives, on for every account (prefs default always)
    max_messages_per_account: int = 10000  # the oldest go beyond it
    max_age_days: float = 0  # messages older than this go (0: kept)
    max_page: int = 100  # results per query at most (XEP-0059 <max/> is capped at it)


@dataclass(frozen=True)
class PrivacyConfig:
    max_lists: int = 20  # XEP-0016 lists per account; beyond: policy-violation
    max_items: int = 1000  # items per list, so also the XEP-0191 blocklist (the default list)


@dataclass(frozen=True)
class PingConfig:
    idle_interval: float = 300.0  # XEP-0199 §4.2: ping a client silent for this long; 0: never
    timeout: float = 60.0  # no answer within this: connection-timeout


@dataclass(frozen=True)
class RegisterConfig:
    enabled: bool = False  # XEP-0077 creation of new accounts
    allow_password_change: bool = True  # also when registration is off
    allow_remove: bool = True  # XEP-0077 §3.2 account cancellation
    max_per_ip_per_hour: int = 5  # registrations from one IP address per hour
    max_per_connection: int = 1  # registrations on one unauthenticated connection


@dataclass(frozen=True)
class LegacyConfig:
    non_sasl_auth: bool = False  # XEP-0078, only ever over TLS
    error_codes: bool = False  # XEP-0086 legacy error 'code' attributes
    compression: bool = False  # XEP-0138 zlib, after TLS and SASL


@dataclass(frozen=True)
class VersionConfig:
    show_os: bool = False  # XEP-0092 <os/> tells attackers what to target; off by default


@dataclass(frozen=True)
class TurnConfig:
    """XEP-0215: the STUN/TURN server offered to clients (docs/CONFIGURATION.md, [turn])."""

    host: str = ""  # none: no services listed
    port: int = 3478  # STUN and TURN, UDP and TCP
    tls_port: int = 0  # TURNS (TURN over TLS); 0: none
    secret: str = ""  # shared with the TURN server (coturn static-auth-secret); none: STUN only
    lifetime: float = 86400.0  # seconds TURN credentials stay valid


@dataclass(frozen=True)
class ContactConfig:
    """XEP-0157 contact addresses (URIs: mailto:, xmpp:, https:), in the server's disco#info."""

    abuse: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()
    feedback: tuple[str, ...] = ()
    sales: tuple[str, ...] = ()
    security: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    support: tuple[str, ...] = ()


@dataclass(frozen=True)
class VCardConfig:
    # XEP-0054: largest stored vCard (serialized XML, PHOTO included), in bytes.
    max_size: int = 131072


@dataclass(frozen=True)
class MucConfig:
    """XEP-0045 multi-user chat: one service per host (docs/CONFIGURATION.md, [muc])."""

    enabled: bool = True
    domain: str = "conference.{host}"  # the service's domain, {host} is the host it serves
    create_rooms: str = "local"  # who may create rooms: "local" | "admins" | "anyone"
    admins: tuple[str, ...] = ()  # bare JIDs owning every room of the service
    max_rooms: int = 10000  # rooms per service
    max_rooms_per_user: int = 100  # rooms one account may own
    max_occupants: int = 200  # a room's default maxusers and its upper bound
    # users of other servers in the service's rooms at once (full JIDs, however many rooms
    # each is in), in all and from one server
    max_remote_occupants: int = 10000
    max_remote_occupants_per_server: int = 1000
    history_default: int = 20  # messages a new room keeps for newcomers
    max_history: int = 200  # the most a room's owner may configure
    max_nick_length: int = 64  # characters of a room nickname
    max_name_length: int = 100  # characters of a room's name
    max_description_length: int = 1000  # characters of a room's description
    # XEP-0313 room archives: which rooms archive unless their owner chose otherwise
    # (muc#roomconfig_enablearchiving): "persistent" | "all" | "none"
    archive_rooms: str = "persistent"
    archive_max_messages: int = 10000  # per room; the oldest go beyond it
    archive_max_age_days: float = 0  # a room's messages older than this go (0: kept)
    # XEP-0045 §7.2.1: a presence without the MUC <x/> from a non-occupant enters the room
    # (groupchat 1.0, as `sendxmpp -c` enters) instead of getting the recommended kick.
    groupchat_1_0: bool = False
    # XEP-0045 §10.1.1 step 4: seconds a new room waits for its owner's configuration before
    # it opens with the default one (clients such as Dino never configure); 0: it waits.
    lock_timeout: float = 300.0


@dataclass(frozen=True)
class UploadConfig:
    """XEP-0363 HTTP file upload: one service per host, files served by the http listener
    (docs/CONFIGURATION.md, [upload])."""

    enabled: bool = True  # only where an http listener exists (the files are served there)
    domain: str = "upload.{host}"  # the service's domain, {host} is the host it serves
    max_file_size: int = 10485760  # bytes of one file (advertised in disco, XEP-0363 §2)
    quota: int = 104857600  # bytes one account may hold (its files plus pending slots)
    expire_after: float = 30.0  # days a file is kept (0: until its account goes)
    slot_timeout: float = 300.0  # seconds a slot's PUT URL stays valid
    max_pending_slots: int = 10  # slots one account may hold unused at a time


@dataclass(frozen=True)
class PepConfig:
    max_nodes: int = 200  # XEP-0163 nodes per account
    max_items: int = 256  # per node: the cap on pubsub#max_items (and what "max" means)
    max_item_size: int = 131072  # bytes of one item's payload (XEP-0060 §7.1.3.6)
    max_bytes_per_account: int = 8388608  # item payloads of one account, all nodes together
    caps_cache_size: int = 10000  # XEP-0115 verified 'ver' values remembered
    caps_timeout: float = 30.0  # seconds a client has to answer the caps disco#info query
    max_subscriptions_per_node: int = 1000  # explicit subscriptions (XEP-0060 §6.1) per node
    # resources of contacts on other servers whose presence (caps) is remembered, in all
    remote_resources: int = 20000


@dataclass(frozen=True)
class S2SConfig:
    """Server-to-server federation (RFC 6120 §13; docs/CONFIGURATION.md, [s2s])."""

    enabled: bool = False  # outbound links; inbound ones need an s2s listener
    require_tls: bool = True  # RFC 6120 §5: STARTTLS before anything else, both directions
    dialback: bool = True  # XEP-0220 when SASL EXTERNAL (XEP-0178) is not possible
    bidi: bool = True  # XEP-0288 bidirectional links (outgoing: only with ca_file)
    ca_file: str = ""  # CAs for peers' certificates; "" = the system store
    routes: tuple[tuple[str, str, int], ...] = ()  # static (domain, host, port), before DNS
    max_queued_stanzas: int = 1000  # per remote domain while its link is being set up
    connect_timeout: float = 20.0  # seconds to resolve, connect and authenticate a link
    idle_timeout: float = 600.0  # seconds an outgoing link may carry nothing
    auth_timeout: float = 30.0  # seconds an inbound link has to authenticate
    max_incoming: int = 1000  # inbound links, all peers together
    max_incoming_per_ip: int = 20  # inbound links from one address
    # A dialback request makes us resolve and connect to the domain it names (XEP-0220
    # §2.2.1): what peers can make us do is bounded by these.
    max_outgoing: int = 1000  # outgoing links being set up or up, all domains together
    max_dialback_pending: int = 100  # verifications waiting for authoritative servers
    max_dialback_pending_per_stream: int = 8  # the same, on one inbound stream
    max_dns_lookups: int = 16  # SRV lookups in flight; more wait for one to end
    dns_servers: tuple[str, ...] = ()  # "ip" or "ip:port" resolvers; () = the system's


# Modules from other packages announce themselves in this entry-point group (docs/MODULES.md).
MODULE_ENTRY_POINTS = "fastxmpp.modules"


@dataclass(frozen=True)
class ModulesConfig:
    """Modules from other packages ([modules], docs/MODULES.md): the entry-point names to load,
    in start order, and each one's own table ([modules.<name>])."""

    load: tuple[str, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    hosts: dict[str, HostConfig]
    listeners: tuple[ListenerConfig, ...]
    c2s: C2SConfig
    limits: LimitsConfig
    storage: StorageConfig
    data_dir: Path
    log_level: str
    source: Path | None  # None: the embedded default
    stream_management: StreamManagementConfig = StreamManagementConfig()
    csi: CsiConfig = CsiConfig()
    roster: RosterConfig = RosterConfig()
    offline: OfflineConfig = OfflineConfig()
    push: PushConfig = PushConfig()
    mam: MamConfig = MamConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    ping: PingConfig = PingConfig()
    register: RegisterConfig = RegisterConfig()
    legacy: LegacyConfig = LegacyConfig()
    version: VersionConfig = VersionConfig()
    contact: ContactConfig = ContactConfig()
    turn: TurnConfig = TurnConfig()
    pep: PepConfig = PepConfig()
    muc: MucConfig = MucConfig()
    vcard: VCardConfig = VCardConfig()
    s2s: S2SConfig = S2SConfig()
    modules: ModulesConfig = ModulesConfig()
    components: dict[str, ComponentConfig] = field(default_factory=dict)
    http: HttpConfig = HttpConfig()
    upload: UploadConfig = UploadConfig()
    # Bare JIDs of local accounts that may run the XEP-0133 service administration commands
    # (fastxmpp/modules/adhoc.py); none: no admin commands are offered.
    admins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Problem:
    line: int
    column: int
    message: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}:{self.column}: {self.message}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        super().__init__("\n".join(problem.format(source) for problem in problems))
        self.source = source
        self.problems = problems


def source_name(path: Path | None) -> str:
    return "<default configuration>" if path is None else str(path)


# --- where things were written ---------------------------------------------------------------

KeyPath = tuple[str | int, ...]  # e.g. ("hosts", "example.org", "cert") or ("listeners", 1)

# One TOML key: bare, "basic" or 'literal', possibly dotted (TOML 1.0 §Keys).
_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*')"""
_DOTTED_KEY = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_TABLE_HEADER = re.compile(rf"\s*(\[\[?)\s*({_DOTTED_KEY})\s*\]\]?\s*(?:#.*)?$")
_KEY_VALUE = re.compile(rf"\s*({_DOTTED_KEY})\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    """The parts of a (dotted, quoted) TOML key, letting tomllib do the unquoting; () when the
    text is not a key after all."""
    parts: list[str] = []
    try:
        node: Any = tomllib.loads(f"{text} = 0")
    except tomllib.TOMLDecodeError:
        return ()
    while isinstance(node, dict):
        [(name, node)] = node.items()
        parts.append(name)
    return tuple(parts)


class _KeyPositions:
    """(line, column) of every table header and key in a TOML text, by its full key path.

    A best-effort scan, line by line: it follows `[table]` and `[[array]]` headers (numbering
    array entries like tomllib does) and records `key =` lines under the current table. It skips
    the insides of multi-line strings; keys inside inline tables are not seen, and a problem
    there points at the enclosing key instead."""

    def __init__(self, text: str) -> None:
        self._positions: dict[KeyPath, tuple[int, int]] = {}
        array_lengths: dict[tuple[str, ...], int] = {}
        table: KeyPath = ()
        in_multiline_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            # An odd number of triple quotes opens or closes a multi-line string.
            quotes = line.count('"""') + line.count("'''")
            if in_multiline_string:
                in_multiline_string = quotes % 2 == 0
                continue
            in_multiline_string = quotes % 2 == 1
            header = _TABLE_HEADER.match(line)
            key = None if header else _KEY_VALUE.match(line)
            if header and (path := _split_key(header.group(2))):
                if header.group(1) == "[[":
                    index = array_lengths.get(path, 0)
                    array_lengths[path] = index + 1
                    self._record((*path, index), number, 1)
                    self._record(path, number, 1)
                    table = (*path, index)
                else:
                    self._record(path, number, 1)
                    table = path
            elif key and (path := _split_key(key.group(1))):
                for length in range(1, len(path) + 1):
                    self._record((*table, *path[:length]), number, key.start(1) + 1)

    def _record(self, path: KeyPath, line: int, column: int) -> None:
        self._positions.setdefault(path, (line, column))

    def locate(self, path: KeyPath) -> tuple[int, int]:
        """Where `path` was written, else its nearest written parent, else line 1."""
        for length in range(len(path), 0, -1):
            position = self._positions.get(path[:length])
            if position is not None:
                return position
        return 1, 1


# --- value checks ----------------------------------------------------------------------------


class _Invalid(Exception):
    """A value check failed; the message completes "<key> ..."."""


Check = Callable[[Any], Any]  # returns the converted value or raises _Invalid


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("must be a string")
    if not value:
        raise _Invalid("must not be empty")
    return value


def _integer_at_least(minimum: int) -> Check:
    def check(value: Any) -> int:
        # bool is a subclass of int in Python, but `true` is not a number in TOML.
        if type(value) is not int:
            raise _Invalid("must be an integer")
        if value < minimum:
            raise _Invalid("must be positive" if minimum == 1 else f"must be at least {minimum}")
        return value

    return check


def _integer_between(minimum: int, maximum: int) -> Check:
    def check(value: Any) -> int:
        if type(value) is not int:
            raise _Invalid("must be an integer")
        if not minimum <= value <= maximum:
            raise _Invalid(f"must be from {minimum} to {maximum}")
        return value

    return check


def _non_negative_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("must be a number")
    if value < 0:
        raise _Invalid("must not be negative")
    return float(value)


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("must be a number")
    if not value > 0:
        raise _Invalid("must be positive")
    return float(value)


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if value not in choices:
            raise _Invalid("must be one of " + ", ".join(f'"{c}"' for c in choices))
        return str(value)

    return check


def _log_level(value: Any) -> str:
    return str(_one_of(*LOG_LEVELS)(_string(value).lower()))


def _port(value: Any) -> int:
    port = _integer_at_least(0)(value)
    if port > 65535:
        raise _Invalid("must be a port number, 0..65535 (0: any free port)")
    return int(port)


def _address(value: Any) -> str:
    address = _string(value)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        try:
            normalize_domain(address)
        except JIDError:
            raise _Invalid("must be an IP address or a host name") from None
    return address


def _mechanisms(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a non-empty array of mechanism names")
    unknown = [m for m in value if m not in SASL_MECHANISMS]
    if unknown:
        raise _Invalid(
            f"has unknown mechanism {unknown[0]!r} (known: {', '.join(SASL_MECHANISMS)})"
        )
    if len(set(value)) != len(value):
        raise _Invalid("names a mechanism twice")
    return tuple(value)


# XEP-0157 §3: a URI scheme, then its part (RFC 3986 §3.1); no whitespace.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
CONTACT_KINDS = ("abuse", "admin", "feedback", "sales", "security", "status", "support")


def _uris(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid("must be an array of URIs (mailto:, xmpp:, https:)")
    for text in value:
        if not _URI.fullmatch(text):
            raise _Invalid(f"has {text!r}, which is not a URI (mailto:, xmpp:, https:)")
    return tuple(value)


def _bare_jids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid("must be an array of bare JIDs")
    prepared = []
    for text in value:
        try:
            jid = parse_jid(text)
        except JIDError as exc:
            raise _Invalid(f"has an invalid JID: {exc}") from None
        if jid.resource or not jid.local:
            raise _Invalid(f"must hold bare JIDs of accounts, not {text!r}")
        prepared.append(jid.bare)
    return tuple(prepared)


def _domain_template(value: Any) -> str:
    template = _string(value)
    try:
        normalize_domain(template.replace("{host}", "example.org"))
    except JIDError:
        raise _Invalid("must be a domain name, {host} standing for each host") from None
    return template


def _routes(value: Any) -> tuple[tuple[str, str, int], ...]:
    if not isinstance(value, dict):
        raise _Invalid('must be a table: { "example.org" = "192.0.2.1:5269" }')
    routes = []
    for domain, target in value.items():
        try:
            name = normalize_domain(domain)
        except JIDError:
            raise _Invalid(f"has an invalid domain {domain!r}") from None
        host, _, port = _string(target).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise _Invalid(f"{domain}: {target!r} must be host:port")
        routes.append((name, _address(host.strip("[]")), int(port)))
    return tuple(routes)


def _dns_servers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Invalid('must be a list: ["192.0.2.53", "127.0.0.1:5353"]')
    servers = []
    for entry in value:
        text = _string(entry)
        host, port = text, ""
        if text.count(":") == 1 or (text.startswith("[") and "]:" in text):
            host, _, port = text.rpartition(":")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise _Invalid(f"{text!r} is not an IP address (with an optional :port)") from None
        if port and (not port.isdigit() or not 0 < int(port) <= 65535):
            raise _Invalid(f"{text!r} has an invalid port")
        servers.append(text)
    return tuple(servers)


def _ip_addresses(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Invalid("must be a list of IP addresses")
    for text in value:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise _Invalid(f"{text!r} is not an IP address") from None
    return tuple(value)


def _ip_networks(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _Invalid("must be a list of IP addresses or networks")
    for text in value:
        try:
            ipaddress.ip_network(text)
        except ValueError:
            raise _Invalid(f"{text!r} is not an IP address or network (address/bits)") from None
    return tuple(value)


def _base_url(value: Any) -> str:
    text = _string(value)
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", text):
        raise _Invalid("must be an http:// or https:// URL without query or fragment")
    return text.rstrip("/")


_SERVER_KEYS: dict[str, Check] = {
    "data_dir": _string,
    "log_level": _log_level,
    "admins": _bare_jids,
}
_LISTENER_KEYS: dict[str, Check] = {
    "kind": _one_of(*LISTENER_KINDS),
    "address": _address,
    "port": _port,
    "tls": _one_of(*LISTENER_TLS_MODES),
}
_HOST_KEYS: dict[str, Check] = {"cert": _string, "key": _string}
_COMPONENT_KEYS: dict[str, Check] = {"secret": _string}
# Sections that map one to one onto a dataclass; absent keys keep the dataclass default.
_SIMPLE_SECTIONS: dict[str, tuple[Callable[..., Any], dict[str, Check]]] = {
    "c2s": (
        C2SConfig,
        {
            "require_encryption": _boolean,
            "resource_conflict": _one_of(*RESOURCE_CONFLICT_POLICIES),
            "max_sasl_failures": _integer_at_least(1),
            "auth_timeout": _positive_number,
            "hibernate_after": _non_negative_number,
            "fast_token_lifetime": _non_negative_number,
            "sasl_mechanisms": _mechanisms,
            "channel_binding": _boolean,
        },
    ),
    "limits": (
        LimitsConfig,
        {
            "max_stanza_size": _integer_at_least(MIN_STANZA_SIZE),
            "max_depth": _integer_at_least(1),
            "max_attributes": _integer_at_least(1),
            "max_elements": _integer_at_least(1),
            "max_unauthenticated_per_ip": _integer_at_least(1),
            "max_resources_per_account": _integer_at_least(1),
            "max_bytes_per_second": _integer_at_least(0),
            "burst_bytes": _integer_at_least(MIN_STANZA_SIZE),
            "max_outbound_buffer": _integer_at_least(MIN_STANZA_SIZE),
            "auth_free_failures": _integer_at_least(0),
            "auth_failures_per_ip": _integer_at_least(1),
            "auth_failures_per_account": _integer_at_least(1),
            "auth_failure_window": _positive_number,
            "ipv6_prefix_length": _integer_between(16, 128),
            "heap_trim_delay": _non_negative_number,
            "gc_full_interval": _non_negative_number,
        },
    ),
    "stream_management": (
        StreamManagementConfig,
        {
            "enabled": _boolean,
            "resume_timeout": _non_negative_number,
            "max_unacked_stanzas": _integer_at_least(1),
            "max_unacked_bytes": _integer_at_least(MIN_STANZA_SIZE),
            "ack_request_every": _integer_at_least(1),
            "ack_request_after": _non_negative_number,
        },
    ),
    "csi": (CsiConfig, {"enabled": _boolean, "max_held_stanzas": _integer_at_least(1)}),
    "storage": (
        StorageConfig,
        {
            "map_size": _integer_at_least(1),
            "scram_iterations": _integer_at_least(MIN_SCRAM_ITERATIONS),
        },
    ),
    "roster": (RosterConfig, {"max_items": _integer_at_least(1)}),
    "offline": (OfflineConfig, {"enabled": _boolean, "max_messages": _integer_at_least(1)}),
    "push": (
        PushConfig,
        {
            "enabled": _boolean,
            "max_registrations": _integer_at_least(1),
            "include_body": _boolean,
            "min_interval": _non_negative_number,
            "timeout": _positive_number,
        },
    ),
    "mam": (
        MamConfig,
        {
            "enabled": _boolean,
            "max_messages_per_account": _integer_at_least(1),
            "max_age_days": _non_negative_number,
            "max_page": _integer_at_least(1),
        },
    ),
    "privacy": (
        PrivacyConfig,
        {"max_lists": _integer_at_least(1), "max_items": _integer_at_least(1)},
    ),
    "ping": (PingConfig, {"idle_interval": _non_negative_number, "timeout": _positive_number}),
    "register": (
        RegisterConfig,
        {
            "enabled": _boolean,
            "allow_password_change": _boolean,
            "allow_remove": _boolean,
            "max_per_ip_per_hour": _integer_at_least(1),
            "max_per_connection": _integer_at_least(1),
        },
    ),
    "legacy": (
        LegacyConfig,
        {"non_sasl_auth": _boolean, "error_codes": _boolean, "compression": _boolean},
    ),
    "version": (VersionConfig, {"show_os": _boolean}),
    "contact": (ContactConfig, {kind: _uris for kind in CONTACT_KINDS}),
    "turn": (
        TurnConfig,
        {
            "host": _string,
            "port": _port,
            "tls_port": _integer_at_least(0),
            "secret": _string,
            "lifetime": _positive_number,
        },
    ),
    "pep": (
        PepConfig,
        {
            "max_nodes": _integer_at_least(1),
            "max_items": _integer_at_least(1),
            "max_item_size": _integer_at_least(1),
            "max_bytes_per_account": _integer_at_least(1),
            "caps_cache_size": _integer_at_least(1),
            "caps_timeout": _positive_number,
            "max_subscriptions_per_node": _integer_at_least(1),
            "remote_resources": _integer_at_least(1),
        },
    ),
    "vcard": (VCardConfig, {"max_size": _integer_at_least(1)}),
    "s2s": (
        S2SConfig,
        {
            "enabled": _boolean,
            "require_tls": _boolean,
            "dialback": _boolean,
            "bidi": _boolean,
            "ca_file": _string,
            "routes": _routes,
            "max_queued_stanzas": _integer_at_least(1),
            "connect_timeout": _positive_number,
            "idle_timeout": _positive_number,
            "auth_timeout": _positive_number,
            "max_incoming": _integer_at_least(1),
            "max_incoming_per_ip": _integer_at_least(1),
            "max_outgoing": _integer_at_least(1),
            "max_dialback_pending": _integer_at_least(1),
            "max_dialback_pending_per_stream": _integer_at_least(1),
            "max_dns_lookups": _integer_at_least(1),
            "dns_servers": _dns_servers,
        },
    ),
    "http": (
        HttpConfig,
        {
            "max_connections": _integer_at_least(1),
            "max_request_size": _integer_at_least(1024),
            "idle_timeout": _positive_number,
            "access_log": _boolean,
            "websocket": _boolean,
            "consider_websocket_secure": _boolean,
            "bosh": _boolean,
            "bosh_max_wait": _positive_number,
            "bosh_inactivity": _positive_number,
            "consider_bosh_secure": _boolean,
            "trusted_proxies": _ip_addresses,
            "public_url": _base_url,
            "metrics": _boolean,
            "metrics_allow": _ip_networks,
        },
    ),
    "upload": (
        UploadConfig,
        {
            "enabled": _boolean,
            "domain": _domain_template,
            "max_file_size": _integer_at_least(1),
            "quota": _integer_at_least(1),
            "expire_after": _non_negative_number,
            "slot_timeout": _positive_number,
            "max_pending_slots": _integer_at_least(1),
        },
    ),
    "muc": (
        MucConfig,
        {
            "enabled": _boolean,
            "domain": _domain_template,
            "create_rooms": _one_of("local", "admins", "anyone"),
            "admins": _bare_jids,
            "max_rooms": _integer_at_least(1),
            "max_rooms_per_user": _integer_at_least(1),
            "max_occupants": _integer_at_least(1),
            "max_remote_occupants": _integer_at_least(0),
            "max_remote_occupants_per_server": _integer_at_least(0),
            "history_default": _integer_at_least(0),
            "max_history": _integer_at_least(0),
            "max_nick_length": _integer_at_least(1),
            "max_name_length": _integer_at_least(1),
            "max_description_length": _integer_at_least(1),
            "archive_rooms": _one_of("persistent", "all", "none"),
            "archive_max_messages": _integer_at_least(1),
            "archive_max_age_days": _non_negative_number,
            "lock_timeout": _non_negative_number,
            "groupchat_1_0": _boolean,
        },
    ),
}
_SECTIONS = ("server", "listeners", "hosts", "modules", "components", *_SIMPLE_SECTIONS)
# Keys that were renamed: still read (when the new name is absent), with a warning.
_RENAMED: dict[tuple[str, str], str] = {
    ("limits", "max_connections_per_ip"): "max_unauthenticated_per_ip",
}


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            bare = re.fullmatch(r"[A-Za-z0-9_-]+", part)
            text += ("." if text else "") + (part if bare else f'"{part}"')
    return text


# --- building a Config -----------------------------------------------------------------------


class _Builder:
    def __init__(self, text: str, base_dir: Path, check_files: bool) -> None:
        self.positions = _KeyPositions(text)
        self.base_dir = base_dir
        self.check_files = check_files
        self.problems: list[Problem] = []

    def problem(self, path: KeyPath, message: str) -> None:
        line, column = self.positions.locate(path)
        self.problems.append(Problem(line, column, message))

    def table(self, value: Any, path: KeyPath) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.problem(path, f"{_dotted(path)} must be a table")
        return {}

    def values(
        self, table: dict[str, Any], path: KeyPath, checks: dict[str, Check]
    ) -> dict[str, Any]:
        """The checked values of a table's known keys; a problem for every other key."""
        result: dict[str, Any] = {}
        for written, value in table.items():
            key_path = (*path, written)
            key = written
            renamed = _RENAMED.get((str(path[0]), written)) if len(path) == 1 else None
            if renamed is not None:
                line, _ = self.positions.locate(key_path)
                log.warning(
                    "configuration line %d: %s is deprecated, read as %s",
                    line,
                    _dotted(key_path),
                    _dotted((*path, renamed)),
                )
                if renamed in table:
                    continue
                key = renamed
            check = checks.get(key)
            if check is None:
                self.problem(key_path, f"unknown key {_dotted(key_path)}")
                continue
            try:
                result[key] = check(value)
            except _Invalid as exc:
                self.problem(key_path, f"{_dotted(key_path)} {exc}")
        return result

    def path(self, text: str) -> Path:
        return self.base_dir / Path(text).expanduser()

    def build(self, data: dict[str, Any], source: Path | None) -> Config:
        for section in data:
            if section not in _SECTIONS:
                self.problem((section,), f"unknown section [{section}]")
        server = self.values(
            self.table(data.get("server", {}), ("server",)), ("server",), _SERVER_KEYS
        )
        simple = {
            name: cls(**self.values(self.table(data.get(name, {}), (name,)), (name,), checks))
            for name, (cls, checks) in _SIMPLE_SECTIONS.items()
        }
        hosts = self.hosts(data.get("hosts", {}))
        admins = server.get("admins", ())
        for admin in admins:
            if admin.rpartition("@")[2] not in hosts:
                self.problem(
                    ("server", "admins"),
                    f"server.admins has {admin}, which is not an account of a host served here",
                )
        return Config(
            hosts=hosts,
            listeners=self.listeners(data.get("listeners", [])),
            c2s=simple["c2s"],
            limits=simple["limits"],
            storage=simple["storage"],
            stream_management=simple["stream_management"],
            csi=simple["csi"],
            roster=simple["roster"],
            offline=simple["offline"],
            push=simple["push"],
            mam=simple["mam"],
            privacy=simple["privacy"],
            ping=simple["ping"],
            register=simple["register"],
            legacy=simple["legacy"],
            version=simple["version"],
            contact=simple["contact"],
            turn=simple["turn"],
            pep=simple["pep"],
            muc=simple["muc"],
            vcard=simple["vcard"],
            s2s=simple["s2s"],
            modules=self.modules(data.get("modules", {})),
            components=self.components(data.get("components", {}), hosts),
            http=simple["http"],
            upload=simple["upload"],
            data_dir=self.path(server.get("data_dir", "var")),
            log_level=server.get("log_level", "info"),
            source=source,
            admins=admins,
        )

    def listeners(self, entries: Any) -> tuple[ListenerConfig, ...]:
        if not isinstance(entries, list):
            self.problem(("listeners",), "listeners must be written as [[listeners]] tables")
            return ()
        if not entries:
            self.problem(("listeners",), "no listener: add a [[listeners]] table")
        listeners: list[ListenerConfig] = []
        for index, entry in enumerate(entries):
            path: KeyPath = ("listeners", index)
            table = self.table(entry, path)
            values = self.values(table, path, _LISTENER_KEYS)
            if "address" not in values:
                if "address" not in table:
                    self.problem(path, f"{_dotted(path)} needs an address")
                continue
            kind = values.get("kind", "c2s")
            tls = values.get("tls", "none" if kind in ("http", "component") else "starttls")
            allowed = {
                "c2s": ("starttls", "direct"),
                "s2s": ("starttls",),
                "component": ("none",),
            }.get(kind, ("none", "direct"))
            if kind == "s2s" and tls == "direct":
                self.problem(
                    (*path, "tls"), f'{_dotted((*path, "tls"))} = "direct" is for c2s listeners'
                )
            elif tls not in allowed:
                self.problem(
                    (*path, "tls"),
                    f"{_dotted((*path, 'tls'))} must be one of "
                    + ", ".join(f'"{mode}"' for mode in allowed)
                    + f" for {kind} listeners",
                )
            default_port = C2S_PORT
            if kind == "s2s":
                default_port = S2S_PORT
            elif kind == "component":
                default_port = COMPONENT_PORT
            elif kind == "http":
                default_port = HTTPS_PORT if tls == "direct" else HTTP_PORT
            elif tls == "direct":
                default_port = DIRECT_TLS_PORT
            listener = ListenerConfig(
                kind, values["address"], values.get("port", default_port), tls
            )
            if listener.port and any(
                (other.address, other.port) == (listener.address, listener.port)
                for other in listeners
            ):
                self.problem(path, f"{listener.address} port {listener.port} is listed twice")
            listeners.append(listener)
        return tuple(listeners)

    def modules(self, table: Any) -> ModulesConfig:
        """[modules]: `load`, the names of modules from other packages, and a table of
        options per module, which the module checks itself (`check_options`)."""
        table = self.table(table, ("modules",))
        load: list[str] = []
        settings: dict[str, dict[str, Any]] = {}
        for key, value in table.items():
            path: KeyPath = ("modules", key)
            if key == "load":
                names = value if isinstance(value, list) else None
                if names is None or not all(isinstance(n, str) and n for n in names):
                    self.problem(path, "modules.load must be a list of module names")
                    continue
                for name in names:
                    if name in load:
                        self.problem(path, f"module {name} is listed twice")
                    else:
                        load.append(name)
            elif isinstance(value, dict):
                settings[key] = value
            else:
                self.problem(path, f"unknown key {_dotted(path)}")
        for name in settings:
            if name not in load:
                self.problem(
                    ("modules", name), f"[modules.{name}] is set but {name} is not in modules.load"
                )
        if self.check_files:
            for name in load:
                self.check_module(name, settings.get(name, {}))
        return ModulesConfig(tuple(load), settings)

    def check_module(self, name: str, settings: dict[str, Any]) -> None:
        """Whether module `name` is installed (its entry point), and what it says about its
        settings: loading it imports the other package, as `serve` will."""
        path: KeyPath = ("modules", name) if settings else ("modules", "load")
        found = entry_points(group=MODULE_ENTRY_POINTS, name=name)
        if not found:
            self.problem(
                path,
                f"module {name} is not installed (no {MODULE_ENTRY_POINTS!r} entry point "
                f"named {name!r})",
            )
            return
        try:
            cls = next(iter(found)).load()
        except Exception as exc:  # a broken package: any error of its import
            self.problem(path, f"module {name} cannot be loaded: {type(exc).__name__}: {exc}")
            return
        check = getattr(cls, "check_options", None)
        if check is None:
            return
        for message in check(settings):
            self.problem(path, f"[modules.{name}]: {message}")

    def domain_tables(
        self, section: str, table: Any, checks: dict[str, Check], what: str
    ) -> Iterator[tuple[str, KeyPath, dict[str, Any], dict[str, Any]]]:
        """The tables of a section keyed by domain ([hosts."<domain>"], [components...]):
        each one's normalized domain, path, checked values and table as written; a problem
        for a name that is no domain or is listed twice."""
        seen: set[str] = set()
        for written_name, entry in self.table(table, (section,)).items():
            path: KeyPath = (section, written_name)
            written = self.table(entry, path)
            values = self.values(written, path, checks)
            try:
                name = normalize_domain(written_name)
            except JIDError as exc:
                self.problem(path, f"{what} {written_name!r} is not a valid domain: {exc}")
                continue
            if name in seen:
                self.problem(path, f"{what} {name} is configured twice")
                continue
            seen.add(name)
            yield name, path, values, written

    def components(self, table: Any, hosts: dict[str, HostConfig]) -> dict[str, ComponentConfig]:
        """[components."<domain>"]: XEP-0114 components, by the domain each one serves."""
        components: dict[str, ComponentConfig] = {}
        for name, path, values, written in self.domain_tables(
            "components", table, _COMPONENT_KEYS, "component"
        ):
            if name in hosts:
                self.problem(path, f"{name} is a host: a component serves a domain of its own")
                continue
            secret = values.get("secret", "")
            if not secret:
                if "secret" not in written:
                    self.problem(path, f"component {name} needs a secret")
                else:
                    self.problem((*path, "secret"), f"component {name}: the secret is empty")
                continue
            components[name] = ComponentConfig(name, secret)
        return components

    def hosts(self, table: Any) -> dict[str, HostConfig]:
        hosts: dict[str, HostConfig] = {}
        table = self.table(table, ("hosts",))
        if not table:
            self.problem(("hosts",), 'no host: add a [hosts."example.org"] table')
        for name, path, values, _written in self.domain_tables("hosts", table, _HOST_KEYS, "host"):
            cert = self.path(values["cert"]) if "cert" in values else None
            key = self.path(values["key"]) if "key" in values else None
            if (cert is None) != (key is None):
                given, missing = ("cert", "key") if key is None else ("key", "cert")
                self.problem((*path, given), f"host {name}: {given} is given without {missing}")
            elif cert is not None and key is not None and self.check_files:
                trouble = check_certificate(cert, key)
                if trouble is not None:
                    self.problem((*path, "cert"), f"host {name}: {trouble}")
            hosts[name] = HostConfig(name, cert, key)
        return hosts


def _syntax_problem(error: tomllib.TOMLDecodeError, text: str) -> Problem:
    # tomllib puts the position into its message: "... (at line 3, column 8)" or
    # "... (at end of document)".
    message = str(error)
    if match := re.search(r" \(at line (\d+), column (\d+)\)$", message):
        return Problem(int(match[1]), int(match[2]), message[: match.start()])
    lines = text.splitlines() or [""]
    return Problem(len(lines), len(lines[-1]) + 1, re.sub(r" \(at [^)]*\)$", "", message))


def _read(path: Path | None, check_files: bool) -> tuple[Config | None, list[Problem]]:
    if path is None:
        text, base_dir = DEFAULT_TOML, Path.cwd()
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            return None, [Problem(1, 1, f"cannot read the configuration: {reason}")]
        base_dir = path.absolute().parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [_syntax_problem(exc, text)]
    builder = _Builder(text, base_dir, check_files)
    config = builder.build(data, path)
    return config, sorted(builder.problems, key=lambda p: (p.line, p.column))


def load_config(path: Path | None, *, check_files: bool = False) -> Config:
    """The configuration in `path` (None: the embedded default). With `check_files`, also check
    that the hosts' certificate and key files are readable and match (as `serve` does)."""
    config, problems = _read(path, check_files)
    if problems or config is None:
        raise ConfigError(source_name(path), problems)
    return config


def check_config(path: Path | None) -> list[Problem]:
    """Every problem in the configuration `path` (None: the embedded default), in line order."""
    return _read(path, check_files=True)[1]
