"""XEP-0077 In-Band Registration: new accounts before authentication (`register.enabled`),
password changes and account removal for logged-in users.

Policy, in the terms of the XEP:

- Registration, like every exchange carrying a plaintext password here, happens only over
  TLS; the stream feature is offered on encrypted, unauthenticated streams only.
- Registration off: an iq get gets service-unavailable (§3.1: "MUST return"), an iq set
  not-allowed.
- Too many registrations from one IP address within an hour (`max_per_ip_per_hour`):
  policy-violation, type wait. §3.1.1 allows not-acceptable for this, but that is also the
  answer to a bad form, and a client could not tell "fix your input" from "come back later".
- One new account per stream by default (`max_per_connection`; §3.1.1 lets a server refuse
  "too many" registrations before authentication): another gets not-acceptable. Test
  harnesses that register all their accounts over one connection (Smack's, and so the XMPP
  Interop Testing suite's, in-band provisioning) need it raised.
- Removal (§3.2): the iq result first, then `Server.remove_account` deletes the account and
  all its data in one transaction and ends every session with a not-authorized stream error.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ..errors import StanzaError
from ..jid import JIDError, normalize_local
from ..records import RecordSlot
from ..storage.accounts import AccountExists, NoSuchAccount, UnusablePassword
from ..stream.throttle import address_block
from .base import Module, iq_result

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.register")


@dataclass(slots=True)
class RegisterRecord:
    """What registration keeps for a stream before it authenticates."""

    done: int = 0  # accounts created on this connection (`max_per_connection`)


REGISTER = RecordSlot(RegisterRecord)

NS = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"
NS_DATA = "jabber:x:data"
WINDOW = 3600.0  # seconds: max_per_ip_per_hour counts registrations in this window

INSTRUCTIONS = "Choose a username and password to register with this server."


def _registration_form() -> str:
    return (
        f"<x xmlns='{NS_DATA}' type='form'>"
        "<title>Account registration</title>"
        f"<instructions>{INSTRUCTIONS}</instructions>"
        f"<field type='hidden' var='FORM_TYPE'><value>{NS}</value></field>"
        "<field type='text-single' label='Username' var='username'><required/></field>"
        "<field type='text-private' label='Password' var='password'><required/></field>"
        "</x>"
    )


def _result(st: Stanza, payload: str = "") -> bytes:
    attrs = "type='result' id=" + quoteattr(st.attrs.get("id", ""))
    return f"<iq {attrs}>{payload}</iq>".encode()


def _fields(query: Any) -> dict[str, str]:
    """username/password (and other simple fields) of a set: the data form's (XEP-0004
    submit) when there is one, else the query's child elements. Absent fields are absent;
    empty ones are empty strings."""
    fields: dict[str, str] = {}
    form = query.find(f"{{{NS_DATA}}}x")
    if form is not None:
        for field in form.findall(f"{{{NS_DATA}}}field"):
            var = field.get("var")
            value = field.find(f"{{{NS_DATA}}}value")
            if var:
                fields[var] = (value.text or "") if value is not None else ""
        return fields
    for child in query:
        if isinstance(child.tag, str) and child.tag.startswith(f"{{{NS}}}"):
            fields[child.tag.rsplit("}", 1)[1]] = child.text or ""
    return fields


class RegisterModule(Module):
    name = "register"
    features = (NS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = self.config.register
        # IP address -> monotonic times of registrations (and ones in progress).
        self._recent: dict[str, deque[float]] = {}

    def start(self) -> None:
        self.router.set_iq_handler(NS, self._authenticated_iq)

    def stream_features(self, stream: C2SStream) -> str:
        if self.settings.enabled and stream.authenticated_local is None and stream.encrypted:
            return f"<register xmlns='{NS_FEATURE}'/>"
        return ""

    # --- before authentication: new accounts (§3.1, §7) ---------------------------------

    def pre_auth_iq(self, stream: C2SStream, st: Stanza) -> bytes | None:
        itype = st.attrs.get("type")
        if not self.settings.enabled:
            if itype == "get":
                raise StanzaError("service-unavailable", "in-band registration is off")
            raise StanzaError("not-allowed", "in-band registration is off")
        if not stream.encrypted:
            raise StanzaError("not-authorized", "STARTTLS first: the password is plaintext")
        if itype == "get":
            payload = (
                f"<query xmlns='{NS}'><instructions>{INSTRUCTIONS}</instructions>"
                f"<username/><password/>{_registration_form()}</query>"
            )
            return _result(st, payload)
        query = st.element().find(f"{{{NS}}}query")
        if query is None:
            raise StanzaError("bad-request", "a jabber:iq:register query is expected")
        if query.find(f"{{{NS}}}remove") is not None:
            # §3.2: cancelling needs an account; this stream has not authenticated.
            raise StanzaError("unexpected-request", "log in to cancel a registration")
        record = REGISTER.get(stream)
        limit = self.settings.max_per_connection
        if record is not None and record.done >= limit:
            raise StanzaError("not-acceptable", f"{limit} registration(s) per connection")
        fields = _fields(query)
        username, password = fields.get("username", ""), fields.get("password", "")
        if not username.strip() or not password:
            # §3.1: every field is required; an empty <password/> is not a password.
            raise StanzaError("not-acceptable", "username and password are required")
        try:
            local = normalize_local(username.strip())
        except JIDError as exc:
            raise StanzaError("not-acceptable", str(exc)) from None
        ip = _peer_ip(stream)
        if not self._take_slot(ip):
            log.info("registration refused for %s: rate limit", ip)
            raise StanzaError(
                "policy-violation", "too many registrations from your address", "wait"
            )
        assert stream.host is not None
        domain = stream.host
        stream.run_iq_step(st, lambda: self._create(stream, st, ip, domain, local, password))
        return None

    async def _create(
        self, stream: C2SStream, st: Stanza, ip: str, domain: str, local: str, password: str
    ) -> bytes:
        accounts = self.server.accounts
        try:
            if accounts.exists(domain, local):
                raise AccountExists(local)
            await self.server.run_blocking(lambda: accounts.create(domain, local, password))
        except AccountExists:
            self._give_back_slot(ip)
            raise StanzaError("conflict", "that username is taken") from None
        except UnusablePassword as exc:
            self._give_back_slot(ip)
            raise StanzaError("not-acceptable", str(exc)) from None
        REGISTER.of(stream).done += 1
        log.info("registered %s@%s from %s", local, domain, ip)
        adhoc = self.hub.get("adhoc")
        if adhoc is not None:
            await adhoc.account_created(domain, local)  # XEP-0133 §4.27: its welcome message
        return _result(st)

    def _take_slot(self, ip: str) -> bool:
        now = time.monotonic()
        recent = self._recent.setdefault(ip, deque())
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        if len(recent) >= self.settings.max_per_ip_per_hour:
            return False
        recent.append(now)
        if len(self._recent) > 10000:
            # Forget addresses with nothing in the window, so the table stays small.
            for key in [k for k, v in self._recent.items() if not v or v[-1] <= now - WINDOW]:
                del self._recent[key]
        return True

    def _give_back_slot(self, ip: str) -> None:
        recent = self._recent.get(ip)
        if recent:
            recent.pop()

    # --- logged in: the current registration, password change, removal (§3.2, §3.3) ---

    def _authenticated_iq(self, origin: C2SStream, st: Stanza, target: Any) -> bytes | None:
        if (
            target is not None
            and target[3] != origin.bare
            and (target[0] or target[1] != origin.domain)
        ):
            # Registration is with the home server, on the account's own behalf (no 'to' or
            # its bare JID, RFC 6120 §10.3.3), not with another account.
            raise StanzaError("service-unavailable")
        local, domain = origin.local, origin.domain
        if st.attrs.get("type") == "get":
            payload = (
                f"<query xmlns='{NS}'><registered/><instructions>You are registered as "
                f"{escape(local)}.</instructions><username>{escape(local)}</username>"
                "<password/></query>"
            )
            return iq_result(origin, st, payload)
        query = st.element().find(f"{{{NS}}}query")
        if query is None:
            raise StanzaError("bad-request", "a jabber:iq:register query is expected")
        if query.find(f"{{{NS}}}remove") is not None:
            if len(query) != 1:
                raise StanzaError("bad-request", "<remove/> must be the only child")
            if not self.settings.allow_remove:
                raise StanzaError("not-allowed", "accounts cannot be removed in-band")
            # §3.2: the result, then a not-authorized stream error to every session.
            origin.send(iq_result(origin, st))
            log.info("account %s@%s removed by its owner", local, domain)
            with contextlib.suppress(NoSuchAccount):  # removed meanwhile by an admin
                self.server.remove_account(domain, local)
            return None
        return self._change_password(origin, st, query)

    def _change_password(self, origin: C2SStream, st: Stanza, query: Any) -> bytes | None:
        if not self.settings.allow_password_change:
            raise StanzaError("not-allowed", "passwords cannot be changed in-band")
        if not origin.encrypted:
            raise StanzaError("not-authorized", "password changes need TLS")
        fields = _fields(query)
        username, password = fields.get("username"), fields.get("password", "")
        if username is None:
            raise StanzaError("bad-request", "<username/> is required")
        if not password:
            # §3.3: an empty password never replaces the current one.
            raise StanzaError("bad-request", "the new password is empty")
        name = username.strip()
        if "@" in name:
            name, _, domain = name.partition("@")
            if domain != origin.domain:
                raise StanzaError("forbidden", "that is not your account")
        try:
            own = normalize_local(name) == origin.local
        except JIDError:
            own = False
        if not own:
            raise StanzaError("forbidden", "that is not your account")
        local, domain = origin.local, origin.domain
        accounts = self.server.accounts

        async def change() -> bytes:
            try:
                await self.server.run_blocking(
                    lambda: accounts.set_password(domain, local, password)
                )
            except UnusablePassword as exc:
                raise StanzaError("not-acceptable", str(exc)) from None
            except NoSuchAccount:
                raise StanzaError("registration-required") from None
            log.info("password of %s@%s changed", local, domain)
            return iq_result(origin, st)

        origin.run_iq_step(st, change)
        return None


def _peer_ip(stream: C2SStream) -> str:
    """The client's address as the per-address limits count it: behind a trusted HTTP proxy
    (WebSocket, BOSH) the one the proxy names, not the proxy's own."""
    connection = stream.connection
    if connection is None:
        return "?"
    return address_block(connection.address, stream.limits.ipv6_prefix_length)


MODULE = RegisterModule
