"""XEP-0363 HTTP File Upload: a service domain per host (`[upload] domain`, registered with
`Router.add_service`) that hands out slots, and the HTTP endpoints (on the server's http
listener, `Module.http_routes`) that take the PUT and serve the file.

- The service (§2): disco#info with identity store/file, the feature and the XEP-0128 form
  with max-file-size; listed in its host's disco#items. Only the host's own accounts get
  slots (§4 permanent error: not-allowed).
- A slot (§3) is a random file id: PUT <base>/upload/<id>/<filename>?expires=..&sig=..,
  GET the same URL without the query. The signature is an HMAC-SHA256, under a secret kept
  in the data directory, of everything the slot allows (id, name, size, type, expiry): the
  URL alone is the credential, no Authorization header (clients copy URLs reliably; some
  web clients cannot set headers on a cross-origin PUT without a preflight per header).
  Slots live in memory, expire after `slot_timeout` and are used once; an account holds at
  most `max_pending_slots`, and their sizes count against its quota.
- Checks (§4): size over max_file_size: not-acceptable with <file-too-large/>; the quota
  (files held plus pending slots): resource-constraint (wait) with <retry stamp/> when the
  oldest file (or slot) will be gone; a file name with a path separator, a control
  character or more than MAX_FILENAME_BYTES, a size that is not a decimal: bad-request.
  Each of these errors carries the <request/> it answers, as §4's examples do (RFC 6120
  §8.3.1: the original XML, a SHOULD): QXmpp 1.4 (Kaidan) ignores an error without it.
- The PUT (§5): Content-Length must be the slot's size (none: 411, larger: 413, other:
  400), Content-Type the slot's (400); the body goes to a temporary file, is synced and
  renamed, then recorded (fastxmpp/storage/upload.py): 201. Anything wrong with the URL
  (signature, expiry, a slot used or unknown): 403.
- GET/HEAD serve the file by its id alone (the bytes are `files/<id>`, never a name from
  the request, so nothing outside that directory can be reached), with its type, ranges
  (aiohttp's FileResponse), `nosniff`, a sandboxing Content-Security-Policy and CORS.
- Files older than `expire_after` days, and files whose record is gone (the CLI's deluser
  purges records only), are deleted by a sweep at start and every SWEEP_INTERVAL; a
  removed account's files go at once (account_removed).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from aiohttp import web
from lxml import etree

from ..errors import StanzaError
from ..jid import JIDError, normalize_domain
from ..storage.lmdb_store import make_private_dir
from ..storage.upload import StoredFile, UploadStore
from .base import Module, iq_result

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.upload")

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
SERVICE_NAME = "HTTP File Upload"
URL_PREFIX = "/upload"
# 144 random bits, URL-safe: not guessable (§10: "long randomized parts in their URLs").
FILE_ID = re.compile(r"[A-Za-z0-9_-]{24}")
MAX_FILENAME_BYTES = 255  # what common file systems allow for one name
# RFC 6838 §4.2 type/subtype names (parameters are not kept).
CONTENT_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
DEFAULT_TYPE = "application/octet-stream"  # §5: when the client named none
SWEEP_INTERVAL = 3600.0  # seconds between expiry sweeps
CHUNK = 65536
# Types a browser may show inline; everything else (HTML, SVG, scripts...) is an attachment.
INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "text/plain")
INLINE_PREFIXES = ("audio/", "video/")
# Served content never runs script nor loads anything, even if a browser renders it.
CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
CORS = {"Access-Control-Allow-Origin": "*"}
PREFLIGHT = {
    **CORS,
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
}


@dataclass(slots=True)
class Slot:
    file_id: str
    filename: str
    size: int
    content_type: str | None
    owner: tuple[str, str]  # (domain, local)
    expires: int  # Unix time


@dataclass(slots=True)
class UploadService:
    domain: str
    host: str


@dataclass(slots=True)
class PendingSlots:
    """An account's slots not used yet, by file id."""

    slots: dict[str, Slot] = field(default_factory=dict)


def check_filename(filename: str | None) -> str:
    if not filename:
        raise StanzaError("bad-request", "a filename is required")
    if (
        "/" in filename
        or "\\" in filename
        or filename in (".", "..")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in filename)
        or len(filename.encode()) > MAX_FILENAME_BYTES
    ):
        raise StanzaError(
            "bad-request",
            f"a filename has no path separator nor control character and at most "
            f"{MAX_FILENAME_BYTES} bytes",
        )
    return filename


def timestamp(when: float) -> str:
    """XEP-0082 date-time, UTC."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def disposition(filename: str, content_type: str) -> str:
    kind = (
        "inline"
        if content_type in INLINE_TYPES or content_type.startswith(INLINE_PREFIXES)
        else "attachment"
    )
    # RFC 6266 §4.3: filename* (RFC 8187) carries any name; no quoting issues.
    return f"{kind}; filename*=UTF-8''{quote(filename, safe='')}"


class UploadModule(Module):
    name = "upload"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = self.config.upload
        self.services: dict[str, UploadService] = {}
        self.store: UploadStore | None = None
        self.pending: dict[tuple[str, str], PendingSlots] = {}
        self.slots: dict[str, Slot] = {}
        self.directory = Path(self.config.data_dir) / "upload"
        self.files_dir = self.directory / "files"
        self.tmp_dir = self.directory / "tmp"
        self.secret = b""
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return bool(self.services)

    def start(self) -> None:
        if not self.settings.enabled:
            return
        if not any(listener.kind == "http" for listener in self.config.listeners):
            log.info("no http listener: no XEP-0363 upload service")
            return
        assert self.server.storage is not None
        self.store = UploadStore(self.server.storage)
        for directory in (self.directory, self.files_dir, self.tmp_dir):
            make_private_dir(directory)
        self.secret = self._load_secret()
        for host in self.config.hosts:
            try:
                domain = normalize_domain(self.settings.domain.replace("{host}", host))
            except JIDError as exc:
                log.error("no upload service for %s: %s", host, exc)
                continue
            if domain in self.config.hosts:
                raise ValueError(f"[upload] domain {domain} is also a host")
            if domain in self.services:
                raise ValueError(f"[upload] domain {domain} serves two hosts: use {{host}}")
            self.services[domain] = UploadService(domain, host)
            self.router.add_service(domain, self.handle)
            log.info("file upload service %s", domain)
        if self.services and not self._urls_are_https():
            # §4: "The host MUST provide Transport Layer Security"; clients may refuse
            # (or leak) plain http:// slots.
            log.warning(
                "XEP-0363 upload slots name plain http:// URLs: set [http] public_url to the "
                "https:// address of a TLS proxy in front of the http listener, or give the "
                'listener tls = "direct"'
            )
        # No upload runs yet: what a crash left half-written goes.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self.server.background.add(self._sweeper)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _load_secret(self) -> bytes:
        """The HMAC key of slot URLs: made once, kept in the data directory (owner only)."""
        path = self.directory / "secret"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            secret = path.read_bytes()
            if len(secret) >= 32:
                return secret
            raise ValueError(
                f"{path} is shorter than 32 bytes: remove it to make a new one"
            ) from None
        secret = os.urandom(32)
        with os.fdopen(fd, "wb") as out:
            out.write(secret)
            out.flush()
            os.fsync(out.fileno())
        return secret

    def disco_items(self, domain: str) -> list[tuple[str, str | None]]:
        """The host's disco#items lists its upload service (XEP-0363 §2)."""
        return [(s.domain, SERVICE_NAME) for s in self.services.values() if s.host == domain]

    # --- the service (XMPP) ------------------------------------------------------------------

    def handle(self, origin: C2SStream, st: Stanza, target: tuple[str, str, str, str]) -> None:
        """Router.add_service handler: every stanza to the service's domain or a JID at it."""
        itype = st.attrs.get("type")
        if st.name == "presence":
            return
        if st.name == "message":
            if itype != "error":
                raise StanzaError("service-unavailable")
            return
        if itype not in ("get", "set"):
            return  # results and errors: the service asked nothing
        if target[0] or target[2] or len(st.children) != 1:
            raise StanzaError("service-unavailable")
        service = self.services[target[1]]
        namespace = st.children[0][0]
        if itype == "get" and namespace == NS_INFO:
            payload = self._info(st)
        elif itype == "get" and namespace == NS_ITEMS:
            query = st.element().find(f"{{{NS_ITEMS}}}query")
            if query is not None and query.get("node") is not None:
                # XEP-0030 §4.2: the service has no nodes (as for disco#info).
                raise StanzaError("item-not-found", "no such node")
            payload = f"<query xmlns='{NS_ITEMS}'/>"
        elif itype == "get" and namespace == NS_UPLOAD:
            try:
                payload = self._request_slot(origin, st, service)
            except StanzaError as refusal:
                # §4's errors carry the <request/> (RFC 6120 §8.3.1: the original XML, a
                # SHOULD): QXmpp, under Kaidan, takes an error without it for no answer
                request = st.element().find(f"{{{NS_UPLOAD}}}request")
                if request is not None:
                    refusal.payload_xml = etree.tostring(
                        request, encoding="unicode", with_tail=False
                    )
                raise
        else:
            raise StanzaError("service-unavailable")
        origin.send(iq_result(origin, st, payload))

    def _info(self, st: Stanza) -> str:
        query = st.element().find(f"{{{NS_INFO}}}query")
        if query is not None and query.get("node") is not None:
            raise StanzaError("item-not-found", "no such node")
        features = "".join(f"<feature var='{f}'/>" for f in (NS_INFO, NS_ITEMS, NS_UPLOAD))
        # XEP-0363 §2 and XEP-0128: the size limit, for clients to check before asking.
        form = (
            "<x xmlns='jabber:x:data' type='result'>"
            f"<field var='FORM_TYPE' type='hidden'><value>{NS_UPLOAD}</value></field>"
            f"<field var='max-file-size'><value>{self.settings.max_file_size}</value></field>"
            "</x>"
        )
        return (
            f"<query xmlns='{NS_INFO}'><identity category='store' type='file' "
            f"name='{SERVICE_NAME}'/>{features}{form}</query>"
        )

    def _request_slot(self, origin: C2SStream, st: Stanza, service: UploadService) -> str:
        # §4: a permanent error for who may not upload: accounts of other hosts and servers.
        if origin.is_remote or origin.domain != service.host:
            raise StanzaError("not-allowed", f"only accounts of {service.host} may upload")
        request = st.element().find(f"{{{NS_UPLOAD}}}request")
        if request is None:
            raise StanzaError("bad-request", "a <request/> is expected")
        filename = check_filename(request.get("filename"))
        size_text = request.get("size") or ""
        if not size_text.isascii() or not size_text.isdigit():
            raise StanzaError("bad-request", "size must be a decimal number of bytes")
        size = int(size_text)
        content_type = request.get("content-type")
        if content_type is not None:
            if not CONTENT_TYPE.fullmatch(content_type):
                raise StanzaError("bad-request", "content-type must be a MIME type/subtype")
            content_type = content_type.lower()
        limit = self.settings.max_file_size
        if size > limit:
            # §4: the limit, in a form clients read.
            raise StanzaError(
                "not-acceptable",
                f"File too large. The maximum file size is {limit} bytes",
                app_xml=(
                    f"<file-too-large xmlns='{NS_UPLOAD}'>"
                    f"<max-file-size>{limit}</max-file-size></file-too-large>"
                ),
            )
        owner = (origin.domain, origin.local)
        now = time.time()
        pending = self._pending(owner, now)
        if len(pending.slots) >= self.settings.max_pending_slots:
            soonest = min(slot.expires for slot in pending.slots.values())
            raise self._wait(f"{len(pending.slots)} slots are not used yet", soonest)
        assert self.store is not None
        files = self.store.files(*owner)
        held = sum(f.size for f in files) + sum(s.size for s in pending.slots.values())
        if held + size > self.settings.quota:
            raise self._wait(
                f"Quota reached: {held} of {self.settings.quota} bytes are held",
                self._quota_frees_at(files, pending),
            )
        file_id = secrets.token_urlsafe(18)
        slot = Slot(
            file_id, filename, size, content_type, owner, int(now + self.settings.slot_timeout)
        )
        pending.slots[file_id] = slot
        self.slots[file_id] = slot
        get_url = self._file_url(service.host, slot)
        put_url = f"{get_url}?expires={slot.expires}&sig={self._sign(slot)}"
        return (
            f"<slot xmlns='{NS_UPLOAD}'><put url={quoteattr(put_url)}/>"
            f"<get url={quoteattr(get_url)}/></slot>"
        )

    def _urls_are_https(self) -> bool:
        """Whether slot URLs start with https:// (what `_file_url` builds them from:
        [http] public_url, else an HTTPS listener if there is one)."""
        public_url = self.config.http.public_url
        if public_url:
            return bool(public_url.startswith("https://"))
        return any(
            listener.kind == "http" and listener.tls == "direct"
            for listener in self.config.listeners
        )

    def _pending(self, owner: tuple[str, str], now: float) -> PendingSlots:
        pending = self.pending.setdefault(owner, PendingSlots())
        for file_id in [i for i, s in pending.slots.items() if s.expires < now]:
            del pending.slots[file_id]
            self.slots.pop(file_id, None)
        return pending

    def _quota_frees_at(self, files: list[StoredFile], pending: PendingSlots) -> float | None:
        """When something the account holds goes by itself: a pending slot expires, or the
        oldest file does (with expire_after)."""
        times = [float(slot.expires) for slot in pending.slots.values()]
        if files and self.settings.expire_after > 0:
            times.append(files[0].created + self.settings.expire_after * 86400)
        return min(times) if times else None

    @staticmethod
    def _wait(text: str, retry_at: float | None) -> StanzaError:
        # §4: a temporary error, with when to retry (XEP-0082, UTC) when we know it.
        retry = (
            ""
            if retry_at is None
            else f"<retry xmlns='{NS_UPLOAD}' stamp='{timestamp(retry_at)}'/>"
        )
        return StanzaError("resource-constraint", text, app_xml=retry)

    def _sign(self, slot: Slot) -> str:
        message = "\0".join(
            (
                slot.file_id,
                slot.filename,
                str(slot.size),
                slot.content_type or "",
                str(slot.expires),
            )
        ).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def _file_url(self, host: str, slot: Slot | StoredFile) -> str:
        http = self.server.http
        assert http is not None
        return (
            f"{http.public_base(host)}{URL_PREFIX}/{slot.file_id}/{quote(slot.filename, safe='')}"
        )

    # --- HTTP --------------------------------------------------------------------------------

    def http_routes(self) -> list[tuple[str, str, Any]]:
        if not self.active:
            return []
        path = URL_PREFIX + "/{file_id}/{filename}"
        return [
            ("PUT", path, self.put),
            ("GET", path, self.get),
            ("HEAD", path, self.get),  # FileResponse sends the headers only
            ("OPTIONS", path, self.preflight),
        ]

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight: web clients (Converse.js) PUT from another origin."""
        return web.Response(status=204, headers=PREFLIGHT)

    @staticmethod
    def _refuse(status: int, reason: str) -> web.Response:
        return web.Response(status=status, text=reason + "\n", headers=CORS)

    async def put(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        slot = self.slots.get(file_id)
        signature = request.query.get("sig", "")
        if (
            slot is None
            or slot.filename != request.match_info["filename"]
            or request.query.get("expires") != str(slot.expires)
            # constant time: a signature is not guessed byte by byte
            or not hmac.compare_digest(signature.encode(), self._sign(slot).encode())
        ):
            return self._refuse(403, "no such slot, or it was used")
        # Once: whatever happens next, the slot is spent (§5: the client asks for a new one).
        del self.slots[file_id]
        self.pending.get(slot.owner, PendingSlots()).slots.pop(file_id, None)
        if time.time() >= slot.expires:
            return self._refuse(403, "the slot has expired")
        length = request.content_length
        if length is None:
            return self._refuse(411, "Content-Length is required")
        if length != slot.size:
            # §5: the service MUST reject a Content-Length other than the slot's size.
            status = 413 if length > slot.size else 400
            return self._refuse(status, f"Content-Length must be {slot.size}")
        sent_type = request.content_type.lower()
        if slot.content_type is not None and sent_type != slot.content_type:
            return self._refuse(400, f"Content-Type must be {slot.content_type}")
        content_type = slot.content_type or (
            sent_type if CONTENT_TYPE.fullmatch(sent_type) else DEFAULT_TYPE
        )
        if not await self._receive(request, slot):
            return self._refuse(400, f"the body must be {slot.size} bytes")
        assert self.store is not None
        self.store.add(
            *slot.owner, StoredFile(file_id, slot.filename, slot.size, content_type, time.time())
        )
        log.info("%s@%s uploaded %s (%d bytes)", slot.owner[1], slot.owner[0], file_id, slot.size)
        return web.Response(status=201, headers=CORS)

    async def _receive(self, request: web.Request, slot: Slot) -> bool:
        """The body to files/<id>: streamed to a temporary file, synced, renamed; False (and
        nothing kept) when it is not exactly the slot's size or the client went away."""
        temporary = self.tmp_dir / slot.file_id
        received = 0
        idle = self.config.http.idle_timeout
        try:
            with temporary.open("xb") as out:
                while True:
                    chunk = await asyncio.wait_for(request.content.read(CHUNK), idle)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > slot.size:
                        break
                    out.write(chunk)
                out.flush()
                if received == slot.size:
                    await self.server.run_blocking(lambda: os.fsync(out.fileno()))
            if received != slot.size:
                return False
            os.replace(temporary, self.files_dir / slot.file_id)
            await self.server.run_blocking(lambda: _fsync_dir(self.files_dir))
            return True
        except Exception as exc:  # the client went away or stalled, the disk failed...
            log.info("upload %s failed: %s", slot.file_id, f"{type(exc).__name__}: {exc}")
            return False
        finally:
            temporary.unlink(missing_ok=True)

    async def get(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        # The id alone names the bytes on disk, and only an id of our own making is looked
        # up: no name from the request ever reaches the file system.
        stored = None
        if FILE_ID.fullmatch(file_id) and self.store is not None:
            stored = self.store.find(file_id)
        path = self.files_dir / file_id
        if (
            stored is None
            or stored.filename != request.match_info["filename"]
            or not path.is_file()
        ):
            return self._refuse(404, "no such file")
        headers = {
            **CORS,
            "Content-Type": stored.content_type,
            "Content-Disposition": disposition(stored.filename, stored.content_type),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": CSP,
        }
        return web.FileResponse(path, headers=headers)

    # --- expiry and accounts -----------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:
                log.exception("upload sweep failed")
            await asyncio.sleep(SWEEP_INTERVAL)

    def sweep(self) -> None:
        """Delete files past expire_after, files without a record and records without a
        file; forget expired slots."""
        assert self.store is not None
        now = time.time()
        for owner in list(self.pending):
            if not self._pending(owner, now).slots:
                del self.pending[owner]
        cutoff = now - self.settings.expire_after * 86400 if self.settings.expire_after else None
        removed = 0
        on_disk = set()
        for path in self.files_dir.iterdir():
            file_id = path.name
            stored = self.store.find(file_id) if FILE_ID.fullmatch(file_id) else None
            expired = cutoff is not None and path.stat().st_mtime < cutoff
            if stored is None or expired:
                path.unlink(missing_ok=True)
                if FILE_ID.fullmatch(file_id):
                    self.store.remove(file_id)
                removed += 1
            else:
                on_disk.add(file_id)
        for file_id in self.store.indexed():
            if file_id not in on_disk:
                self.store.remove(file_id)
        if removed:
            log.info("upload sweep: %d files removed", removed)

    def account_removed(self, domain: str, local: str) -> None:
        # The account's records went with it (storage/upload.py); its bytes and index go now.
        if self.store is None:
            return
        for file_id in self.store.indexed():
            if self.store.owner(file_id) == (domain, local):
                (self.files_dir / file_id).unlink(missing_ok=True)
                self.store.remove(file_id)
        pending = self.pending.pop((domain, local), None)
        for file_id in () if pending is None else pending.slots:
            self.slots.pop(file_id, None)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


MODULE = UploadModule
