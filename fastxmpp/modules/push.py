"""XEP-0357 Push Notifications: an account registers app servers (a JID and a pubsub node, one
per device), and messages that reach none of its clients live make the server publish a
notification to each of them; the app server then wakes the device (APNs, FCM).

- `<enable jid node/>` with an optional publish-options form (§5: usually a secret the app
  server checks) adds or replaces a registration, stored per account; `<disable jid [node]/>`
  removes one, or every one of that app server (§7). Only the account itself, by iq set to its
  bare JID or without 'to'; `[push] max_registrations` per account (beyond: resource-constraint).
- A chat or normal message with a body (or an encrypted payload: OMEMO, OpenPGP) that reached
  no attached client of the account, i.e. it was stored offline or went to sessions detached
  under XEP-0198, is counted for each registration, at the pipeline's "message/delivered"
  stage (so what was refused is never notified). A registration also remembers the resource
  that enabled it: a message that reaches that resource while it is connected but inactive
  (XEP-0352: the app is in the background, as iOS suspends it) is counted for it too: by
  enabling push on a session and then going inactive, a client asks to be woken.
- A notification (§6) is a pubsub publish to the registration's node with the
  urn:xmpp:push:summary form: message-count (messages since the last notification),
  last-message-sender, and last-message-body only with `[push] include_body` (the app server
  and the push service would read it), then the publish-options the client gave.
- Per registration at most one notification per `[push] min_interval` seconds; what arrives
  meanwhile goes into the next one (its message-count). An app server answering with an
  error of type cancel or auth (the device is gone, the secret is wrong) loses its
  registration (§6: the server MAY disable it; keeping it would push into the void forever).
- App servers are reached through XEP-0114 components or server-to-server links.

"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from ..errors import StanzaError
from ..jid import JIDError, parse_jid
from ..storage.lmdb_store import StorageFull
from ..storage.push import PushStore, TooManyRegistrations
from .base import Module, answer_once_stored, iq_result
from .private import fragment_xml

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.push")

NS_PUSH = "urn:xmpp:push:0"
NS_DATA = "jabber:x:data"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
SUMMARY = "urn:xmpp:push:summary"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
# Payloads that stand for a body the server cannot read (end-to-end encryption).
ENCRYPTED = frozenset(
    (
        "eu.siacs.conversations.axolotl",  # OMEMO (XEP-0384 0.3)
        "urn:xmpp:omemo:2",  # OMEMO 2
        "urn:xmpp:openpgp:0",  # XEP-0373
        "jabber:x:encrypted",  # XEP-0027
        "urn:xmpp:eme:0",  # XEP-0380
    )
)
NS_CLIENT = "jabber:client"


def worth_a_notification(st: Stanza) -> bool:
    """A message a person would want to be woken for: chat or normal, with a body or an
    encrypted payload (not chat states, receipts or markers alone)."""
    if st.attrs.get("type", "normal") not in ("chat", "normal"):
        return False
    return any((ns == NS_CLIENT and name == "body") or ns in ENCRYPTED for ns, name in st.children)


def attached(session: Any) -> bool:
    """A session that reads what it is sent now (not detached under XEP-0198)."""
    sm = session.sm
    return sm is None or not sm.detached


@dataclass(slots=True)
class Pending:
    """What waits for a registration's next notification (min_interval)."""

    form: bytes
    count: int = 0
    sender: str = ""
    body: str | None = None
    last_sent: float = float("-inf")
    timer: asyncio.TimerHandle | None = None


class PushModule(Module):
    name = "push"
    account_features: ClassVar[tuple[str, ...]] = (NS_PUSH,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.settings = self.config.push
        self.store: PushStore | None = None
        # (account bare JID, app server JID, node) -> what waits for the next notification.
        self.pending: dict[tuple[str, str, str], Pending] = {}

    def start(self) -> None:
        if not self.settings.enabled:
            # Not offered: disco must not name it (an instance's own, empty tuple).
            self.account_features = ()  # type: ignore[misc]
            return
        assert self.server.storage is not None
        self.store = PushStore(self.server.storage)
        self.router.set_iq_handler(NS_PUSH, self.command)
        self._hook_while_registered()

    def _hook_while_registered(self) -> None:
        """At "message/delivered" only while some account has a registration: a server
        whose users never enabled push pays nothing per message for it."""
        assert self.store is not None
        wanted = self.store.any()
        if wanted != self.hub.hooked(self, "message/delivered"):
            if wanted:
                self.hub.hook(self, "message/delivered", self.delivered)
            else:
                self.hub.unhook(self, "message/delivered")

    def stop(self) -> None:
        for pending in self.pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self.pending.clear()

    def account_removed(self, domain: str, local: str) -> None:
        bare = f"{local}@{domain}"
        for key in [key for key in self.pending if key[0] == bare]:
            pending = self.pending.pop(key)
            if pending.timer is not None:
                pending.timer.cancel()
        if self.store is not None:
            self._hook_while_registered()

    # --- enable / disable (§5, §7) -----------------------------------------------------

    def command(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> None:
        """Enable or disable, answered once the registrations are stored (a phone enables
        at every login: the server does not wait for the disk meanwhile)."""
        assert self.store is not None
        if target is not None and target[3] != origin.bare:
            raise StanzaError("forbidden", "push registrations are the account's own")
        if st.attrs.get("type") != "set":
            raise StanzaError("bad-request", "enable and disable are iq set")
        element = st.element()[0]
        action = etree.QName(element).localname
        jid = element.get("jid")
        if not jid:
            raise StanzaError("bad-request", "the app server's 'jid' is missing")
        try:
            jid = str(parse_jid(jid))
        except JIDError:
            raise StanzaError("jid-malformed", "the app server's 'jid' is malformed") from None
        node = element.get("node")
        if action == "enable":
            if not node:
                raise StanzaError("bad-request", "the node to publish to is missing")
            self._enable(origin, st, jid, node, self._publish_options(element))
        elif action == "disable":
            self._disable(origin, st, jid, node or None)
        else:
            raise StanzaError("bad-request", f"<{action}/> is not a push command")

    @staticmethod
    def _publish_options(enable: Any) -> bytes:
        forms = enable.findall(f"{{{NS_DATA}}}x")
        if not forms:
            return b""
        if len(forms) > 1:
            raise StanzaError("bad-request", "one publish-options form at most")
        form = forms[0]
        form_type = form.findtext(f"{{{NS_DATA}}}field[@var='FORM_TYPE']/{{{NS_DATA}}}value")
        if form_type not in (None, PUBLISH_OPTIONS):
            raise StanzaError("bad-request", f"the form must be {PUBLISH_OPTIONS}")
        return fragment_xml(form)

    def _enable(self, origin: C2SStream, st: Stanza, jid: str, node: str, form: bytes) -> None:
        assert self.store is not None
        limit = self.settings.max_registrations
        work = self.store.enabling(
            origin.domain, origin.local, jid, node, origin.resource, form, limit
        )

        def stored(_: None) -> bytes:
            self._hook_while_registered()
            pending = self.pending.get((origin.bare, jid, node))
            if pending is not None:
                pending.form = form
            return iq_result(origin, st)

        def refused(exc: Exception) -> StanzaError | None:
            if not isinstance(exc, TooManyRegistrations):
                return None
            text = f"at most {limit} push registrations per account"
            return StanzaError("resource-constraint", text)

        answer_once_stored(origin, st, self.store.later(work), stored, refused)

    def _disable(self, origin: C2SStream, st: Stanza, jid: str, node: str | None) -> None:
        assert self.store is not None
        work = self.store.disabling(origin.domain, origin.local, jid, node)

        def stored(_: int) -> bytes:
            self._hook_while_registered()
            for key in [k for k in self.pending if k[:2] == (origin.bare, jid)]:
                if node is None or key[2] == node:
                    self._drop(key)
            return iq_result(origin, st)

        answer_once_stored(origin, st, self.store.later(work), stored)

    # --- notifications (§6) ------------------------------------------------------------

    def delivered(
        self,
        origin: Any,
        st: Stanza,
        target: tuple[str, ...],
        data: bytes,
        sessions: tuple[Any, ...],
    ) -> None:
        reached = False  # an attached session got it live
        inactive: set[str] = set()  # ... but said it is in the background (XEP-0352)
        for session in sessions:
            if attached(session):
                reached = True
                if session.csi is not None:
                    inactive.add(session.resource)
        if (reached and not inactive) or not worth_a_notification(st):
            return
        assert self.store is not None
        local, domain, _, bare = target
        registrations = self.store.registrations(domain, local)
        if not registrations:
            return
        body = None
        if self.settings.include_body:
            body = st.element().findtext(f"{{{st.ns}}}body")  # (jabber:server from a peer)
        for jid, node, resource, form in registrations:
            if reached and resource not in inactive:
                # Reached live: only a client in the background that enabled this
                # registration itself (it asked to be woken) gets a notification.
                continue
            key = (bare, jid, node)
            pending = self.pending.get(key)
            if pending is None:
                pending = self.pending[key] = Pending(form)
            pending.count += 1
            pending.sender = origin.full
            pending.body = body
            if pending.timer is None:
                loop = asyncio.get_running_loop()
                wait = pending.last_sent + self.settings.min_interval - loop.time()
                pending.timer = loop.call_later(max(0.0, wait), self._notify, key)

    def _notify(self, key: tuple[str, str, str]) -> None:
        pending = self.pending.get(key)
        if pending is None:
            return
        pending.timer = None
        if not pending.count:
            # Nothing came within min_interval of the last one: forget the registration's
            # throttle state (what keeps `pending` small).
            del self.pending[key]
            return
        bare, jid, node = key
        payload = self._notification(node, pending)
        pending.count = 0
        loop = asyncio.get_running_loop()
        pending.last_sent = loop.time()
        # Wake up once more after min_interval: to send what came meanwhile, or to forget.
        pending.timer = loop.call_later(self.settings.min_interval, self._notify, key)
        answer = self.hub.request(bare, jid, payload)
        if answer is None:
            log.info("push for %s: %s cannot be reached (no component, no federation)", bare, jid)
            return
        task = loop.create_task(self._answered(key, answer))
        self.server.background.add(task)
        task.add_done_callback(self.server.background.discard)

    def _notification(self, node: str, pending: Pending) -> str:
        fields = [
            ("FORM_TYPE", SUMMARY),
            ("message-count", str(pending.count)),
            ("last-message-sender", pending.sender),
        ]
        if pending.body is not None:
            fields.append(("last-message-body", pending.body))
        summary = "".join(
            f"<field var={quoteattr(var)}><value>{escape(value)}</value></field>"
            for var, value in fields
        )
        options = ""
        if pending.form:
            options = f"<publish-options>{pending.form.decode()}</publish-options>"
        return (
            f"<pubsub xmlns='{NS_PUBSUB}'><publish node={quoteattr(node)}><item>"
            f"<notification xmlns='{NS_PUSH}'><x xmlns='{NS_DATA}' type='submit'>{summary}</x>"
            f"</notification></item></publish>{options}</pubsub>"
        )

    async def _answered(self, key: tuple[str, str, str], answer: asyncio.Future[Any]) -> None:
        bare, jid, node = key
        try:
            reply = await asyncio.wait_for(answer, self.settings.timeout)
        except TimeoutError:
            log.info("push for %s: %s did not answer a notification", bare, jid)
            return
        if reply.attrs.get("type") != "error":
            return
        # In the namespace of the stream it came on (component, server).
        error = reply.element().find("{*}error")
        error_type = None if error is None else error.get("type")
        if error_type not in ("cancel", "auth"):
            return
        # §6: the app server refuses for good (the device unregistered, a wrong secret).
        log.info("push for %s: %s refused (%s): registration removed", bare, jid, error_type)
        assert self.store is not None
        local, _, domain = bare.partition("@")
        try:
            await self.store.later(self.store.disabling(domain, local, jid, node))
            self._hook_while_registered()
        except StorageFull:
            log.warning("push for %s: cannot remove the registration: storage full", bare)
        self._drop(key)

    def _drop(self, key: tuple[str, str, str]) -> None:
        pending = self.pending.pop(key, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()


MODULE = PushModule
