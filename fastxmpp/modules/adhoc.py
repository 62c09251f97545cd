"""XEP-0050 Ad-Hoc Commands carrying the XEP-0133 Service Administration commands: operators
administer the server from their client (Gajim's "Execute Command", Psi, Converse.js).

Who: the accounts named in `[server] admins` (local bare JIDs), over their own client
sessions; anyone else gets forbidden (XEP-0050 §4.4), users of other servers too. With no
admins configured nothing is offered. Every admin action is logged (who, what).

Where: the commands are served at every host's domain and, for the asker, at the asker's own
bare JID (RFC 6120 §10.3.3: the server answers on the account's behalf), which is where the
XMPP Interop Testing suite's ServiceAdministrationIntegrationTest sends them. disco#items of
node `http://jabber.org/protocol/commands` lists them (§2.2; empty for non-admins), disco#info
of a command node describes it. A command acts on the host it was sent to (XEP-0133 §1: "the
service"): accounts of another domain are refused with an error note.

How (§2.4): `execute` starts a session (a fresh `sessionid`) and answers the command's form,
`status='executing'`, with `<actions execute='complete'>`; `complete` runs it with the
submitted form (`status='completed'`, the result form and `<note/>`s), `cancel` ends it
(`status='canceled'`); a command with a review stage (delete-user) also takes `next` and
`prev`. Commands without input (the counts) complete at `execute`. What the admin typed that
cannot be done (an invalid or foreign JID, passwords that differ, an account that exists)
completes with an error note (§3.6, and what Smack's clients, and so the suite, read; an iq
error would be a protocol error). Protocol errors are the §4.4 ones: bad-request with
<malformed-action/> (unknown action), <bad-action/> (prev at the first stage; `next` at
the last one completes, as older Smack versions send it), <bad-payload/> (no form, or a
required field missing), <bad-sessionid/> (unknown session, or another command's), and
not-allowed with <session-expired/> (completed, canceled or timed out).
<bad-locale/> is never sent: the forms are in English for every locale, as a refusal would
lock out every client set to another language.

Sessions are kept per client session (gone with it), at most `MAX_SESSIONS` each (a new one
displaces the oldest) and `SESSION_LIFETIME` seconds each: nothing a peer sends makes them
grow, and only admins have any.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ..delay import stamp
from ..errors import StanzaError
from ..jid import JIDError, parse_jid
from ..records import RecordSlot
from ..storage import accounts as account_records
from ..storage.accounts import AccountExists, NoSuchAccount, UnusablePassword
from ..storage.lmdb_store import StorageFailed, StorageFull
from .base import Module, iq_result
from .roster import item_xml

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

log = logging.getLogger("fastxmpp.adhoc")

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_ADMIN = "http://jabber.org/protocol/admin"  # XEP-0133 §3: FORM_TYPE and node prefix
NS_DATA = "jabber:x:data"
NS_ROSTER = "jabber:iq:roster"
ACTIONS = ("execute", "cancel", "prev", "next", "complete")  # XEP-0050 §4.1, §3.4
SESSION_LIFETIME = 600.0  # seconds a command session waits for its next stage
MAX_SESSIONS = 5  # open command sessions per client session
ENDED_REMEMBERED = 16  # ended sessionids answered with session-expired, per client session
LIST_DEFAULT = 100  # XEP-0133 §4.18: users listed when max_items is not given
ENDED = "an administrator ended the session"
MOTD_KEY = b"motd"  # the host's (local ""): id, newline, text
MOTD_SEEN_KEY = b"motd-seen"  # an account's: the id of the last message of the day it got
WELCOME_KEY = b"welcome"  # the host's: the welcome message's text
WELCOME_PENDING_KEY = b"welcome-pending"  # a new account's: the welcome it gets at first login
MAX_ITEMS_OPTIONS = ("25", "50", "75", "100", "150", "200", "none")


@dataclass(slots=True)
class CommandSession:
    node: str
    stage: int
    values: dict[str, list[str]]
    deadline: float


@dataclass(slots=True)
class AdhocRecord:
    """A client session's open command sessions, and the ids of those that ended."""

    sessions: dict[str, CommandSession] = field(default_factory=dict)
    ended: deque[str] = field(default_factory=lambda: deque(maxlen=ENDED_REMEMBERED))


ADHOC = RecordSlot(AdhocRecord)


class CommandFailed(Exception):
    """What the admin asked cannot be done: the command completes with this error note."""


@dataclass(frozen=True, slots=True)
class Field:
    var: str
    type: str
    label: str
    required: bool = False
    options: tuple[tuple[str, str], ...] = ()  # (label, value) of a list field's choices


@dataclass(frozen=True, slots=True)
class Stage:
    title: str
    instructions: str
    fields: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # the node after NS_ADMIN + "#"
    label: str
    stages: tuple[Stage, ...]  # forms asked before it runs; none: it runs at execute
    run: str  # the AdhocModule method: (origin, domain, values) -> (result form XML, notes)
    prefill: str = ""  # the AdhocModule method: (domain) -> the form's current values

    @property
    def node(self) -> str:
        return f"{NS_ADMIN}#{self.name}"


ACCOUNT = Field("accountjid", "jid-single", "The Jabber ID for the account", required=True)
ACCOUNTS = Field("accountjids", "jid-multi", "The Jabber ID(s)", required=True)
MAX_ITEMS = Field(
    "max_items",
    "list-single",
    "Maximum number of items to show",
    options=tuple((o if o != "none" else "None", o) for o in MAX_ITEMS_OPTIONS),
)
# §4.31, with "now" before the XEP's choices.
DELAY = Field(
    "delay",
    "list-single",
    "Time delay before shutting down",
    options=(("now", "0"), ("30 seconds", "30"), ("60 seconds", "60"), ("90 seconds", "90"),
             ("2 minutes", "120"), ("3 minutes", "180"), ("4 minutes", "240"),
             ("5 minutes", "300")),
)  # fmt: skip


def _one_form(name: str, label: str, purpose: str, fields: tuple[Field, ...], run: str) -> Command:
    """A command with one form (XEP-0133's usual shape)."""
    return Command(name, label, (Stage(label, f"Fill out this form to {purpose}.", fields),), run)


def _list_command(name: str, label: str, what: str) -> Command:
    purpose = f"request the {what} users of this service"
    return _one_form(name, label, purpose, (MAX_ITEMS,), "list_users")


def _count_command(name: str, label: str) -> Command:
    return Command(name, label, (), "count_users")


PASSWORD = Field("password", "text-private", "The password for this account", required=True)
PASSWORD_AGAIN = Field("password-verify", "text-private", "Retype password", required=True)
MOTD = (Field("motd", "text-multi", "Message of the day", required=True),)
WELCOME = (Field("welcome", "text-multi", "Welcome message", required=True),)
ANNOUNCEMENT = (
    Field("subject", "text-single", "Subject"),
    Field("announcement", "text-multi", "Announcement", required=True),
)

# XEP-0133 §4, in the order of the XEP.
COMMANDS = {
    c.node: c
    for c in (
        _one_form("add-user", "Add a User", "add a user", (ACCOUNT, PASSWORD, PASSWORD_AGAIN),
                  "add_user"),
        Command("delete-user", "Delete a User", (
            Stage("Delete a User", "Fill out this form to delete a user.", (ACCOUNTS,)),
            Stage("Confirm", "These accounts and all their data will be deleted.", ()),
        ), "delete_user"),
        _one_form("disable-user", "Disable a User", "disable a user", (ACCOUNTS,),
                  "disable_user"),
        _one_form("reenable-user", "Re-Enable a User", "re-enable a user", (ACCOUNTS,),
                  "reenable_user"),
        _one_form("end-user-session", "End User Session", "end a user's sessions", (ACCOUNTS,),
                  "end_user_session"),
        _one_form("change-user-password", "Change User Password", "change a user's password",
                  (ACCOUNT, PASSWORD), "change_password"),
        _one_form("get-user-roster", "Get User Roster", "get a user's roster", (ACCOUNTS,),
                  "user_roster"),
        _one_form("get-user-lastlogin", "Get User Last Login Time",
                  "get a user's last login time", (ACCOUNTS,), "user_lastlogin"),
        _one_form("user-stats", "Get User Statistics", "gather user statistics", (ACCOUNT,),
                  "user_stats"),
        _count_command("get-registered-users-num", "Get Number of Registered Users"),
        _count_command("get-disabled-users-num", "Get Number of Disabled Users"),
        _count_command("get-online-users-num", "Get Number of Online Users"),
        _count_command("get-active-users-num", "Get Number of Active Users"),
        _count_command("get-idle-users-num", "Get Number of Idle Users"),
        _list_command("get-registered-users-list", "Get List of Registered Users", "registered"),
        _list_command("get-disabled-users-list", "Get List of Disabled Users", "disabled"),
        _list_command("get-online-users-list", "Get List of Online Users", "online"),
        _list_command("get-active-users", "Get List of Active Users", "active"),
        _list_command("get-idle-users", "Get List of Idle Users", "idle"),
        _one_form("announce", "Send Announcement to Online Users",
                  "make an announcement to all online users of this service", ANNOUNCEMENT,
                  "announce"),
        _one_form("set-motd", "Set Message of the Day", "set the message of the day", MOTD,
                  "set_motd"),
        Command("edit-motd", "Edit Message of the Day", (Stage(
            "Edit Message of the Day", "Fill out this form to edit the message of the day.",
            MOTD),), "set_motd", "current_motd"),
        Command("delete-motd", "Delete Message of the Day", (), "delete_motd"),
        # §4.27: the form holds the current welcome message.
        Command("set-welcome", "Set Welcome Message", (Stage(
            "Set Welcome Message", "Fill out this form to set the welcome message.",
            WELCOME),), "set_welcome", "current_welcome"),
        Command("delete-welcome", "Delete Welcome Message", (), "delete_welcome"),
        _one_form("shutdown", "Shut Down Service", "shut down the service",
                  (DELAY, Field("announcement", "text-multi", "Announcement")), "shutdown"),
    )
}  # fmt: skip

# The field each count or list command answers with, and which users it counts (§4.13-4.22):
# online: a bound session; active: a session that sent available presence (RFC 6121 §4.2);
# idle: online without one; disabled: §4.3.
USER_SETS = {
    "get-registered-users-num": ("registeredusersnum", "registered"),
    "get-disabled-users-num": ("disabledusersnum", "disabled"),
    "get-online-users-num": ("onlineusersnum", "online"),
    "get-active-users-num": ("activeusersnum", "active"),
    "get-idle-users-num": ("idleusersnum", "idle"),
    "get-registered-users-list": ("registereduserjids", "registered"),
    "get-disabled-users-list": ("disableduserjids", "disabled"),
    "get-online-users-list": ("onlineuserjids", "online"),
    "get-active-users": ("activeuserjids", "active"),
    "get-idle-users": ("idleuserjids", "idle"),
}

Outcome = tuple[str, list[tuple[str, str]]]  # (result form XML, [(note type, text)])


def _field_xml(f: Field, values: list[str] | None = None) -> str:
    inner = "".join(f"<value>{escape(v)}</value>" for v in values or ())
    inner += "".join(
        f"<option label={quoteattr(label)}><value>{escape(value)}</value></option>"
        for label, value in f.options
    )
    if f.required:
        inner += "<required/>"
    return (
        f"<field var={quoteattr(f.var)} type={quoteattr(f.type)} label={quoteattr(f.label)}>"
        f"{inner}</field>"
    )


def _form(form_type: str, fields: str, title: str = "", instructions: str = "") -> str:
    head = f"<title>{escape(title)}</title>" if title else ""
    head += f"<instructions>{escape(instructions)}</instructions>" if instructions else ""
    return (
        f"<x xmlns='{NS_DATA}' type='{form_type}'>{head}"
        f"<field var='FORM_TYPE' type='hidden'><value>{NS_ADMIN}</value></field>{fields}</x>"
    )


def _result_field(var: str, values: list[str], field_type: str = "") -> str:
    type_attr = f" type='{field_type}'" if field_type else ""
    inner = "".join(f"<value>{escape(v)}</value>" for v in values)
    return f"<field var={quoteattr(var)}{type_attr}>{inner}</field>"


def _submitted(command: Any) -> dict[str, list[str]] | None:
    """The fields of the command's data form (XEP-0004 §3.2: submit; XEP-0050 §3.5.1 reads
    a 'cancel' form as a submit one), or None without a form."""
    form = command.find(f"{{{NS_DATA}}}x")
    if form is None:
        return None
    values: dict[str, list[str]] = {}
    for f in form.iterfind(f"{{{NS_DATA}}}field"):
        var = f.get("var")
        if var and var != "FORM_TYPE":
            values[var] = [v.text or "" for v in f.iterfind(f"{{{NS_DATA}}}value")]
    return values


def _command_error(condition: str, specific: str, text: str) -> StanzaError:
    """XEP-0050 §4.4: a stanza error with its specific condition element."""
    return StanzaError(condition, text, app_xml=f"<{specific} xmlns='{NS_COMMANDS}'/>")


class AdhocModule(Module):
    name = "adhoc"
    features = (NS_COMMANDS,)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        # domain -> (id, text) of its message of the day, None: none (read once per domain).
        self._motd: dict[str, tuple[bytes, str] | None] = {}
        # (domain, local) -> the id of the message of the day just sent, until its record
        # is stored (a second login meanwhile does not get it again).
        self._motd_recording: dict[tuple[str, str], bytes] = {}
        # domain -> its welcome message, None: none (read once per domain).
        self._welcome: dict[str, str | None] = {}
        # New accounts whose welcome was just sent, until its record is deleted.
        self._welcome_sending: set[tuple[str, str]] = set()
        # Online accounts (bare JID) -> Unix time of their latest resource binding, for
        # get-user-lastlogin (kept only when there are admins to ask).
        self._logins: dict[str, float] = {}

    def start(self) -> None:
        self.router.set_iq_handler(NS_COMMANDS, self.answer)
        self.store = self.open_store()

    def session_bound(self, session: C2SStream) -> None:
        if self.config.admins:
            self._logins[session.bare] = time.time()

    def session_ended(self, session: C2SStream) -> None:
        if not self.router.resources(session.bare):
            self._logins.pop(session.bare, None)

    # --- who may ask, and where --------------------------------------------------------

    def is_admin(self, origin: Any) -> bool:
        return not origin.is_remote and origin.bare in self.config.admins

    def _responder(self, origin: Any, target: tuple[str, ...] | None) -> str | None:
        """The host a request to `target` administers: the server's domain, or the asker's
        own bare JID (its domain); None for anything else (another account)."""
        if target is None:
            return None if origin.is_remote else origin.domain
        if not target[0]:
            return target[1]
        return target[1] if target[3] == origin.bare and not origin.is_remote else None

    # --- XEP-0030 (called by the disco module) ----------------------------------------

    def disco_node_items(
        self, origin: Any, target: tuple[str, ...] | None, node: str, jid: str
    ) -> str | None:
        """§2.2: the commands `origin` may run at `jid`, as disco items; None for a node
        that is not the command list or a target that has none."""
        if node != NS_COMMANDS or self._responder(origin, target) is None:
            return None
        if not self.is_admin(origin):
            return ""  # §2.2: the list depends on the requester
        return "".join(
            f"<item jid={quoteattr(jid)} node={quoteattr(c.node)} name={quoteattr(c.label)}/>"
            for c in COMMANDS.values()
        )

    def disco_node_info(self, origin: Any, target: tuple[str, ...] | None, node: str) -> str | None:
        """§2.2: disco#info of the command list node and of each command node."""
        if self._responder(origin, target) is None:
            return None
        if node == NS_COMMANDS:
            return "<identity category='automation' type='command-list'/>"
        command = COMMANDS.get(node)
        if command is None:
            return None
        if not self.is_admin(origin):
            raise StanzaError("forbidden", "the service administration commands are for admins")
        return (
            f"<identity category='automation' type='command-node' "
            f"name={quoteattr(command.label)}/>"
            f"<feature var='{NS_COMMANDS}'/><feature var='{NS_DATA}'/>"
        )

    # --- XEP-0050 §2.4: execution -------------------------------------------------------

    def answer(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes | None:
        domain = self._responder(origin, target)
        if domain is None:
            if origin.is_remote:
                raise StanzaError("forbidden", "ask your own server")
            raise StanzaError("service-unavailable")
        if st.attrs.get("type") != "set":
            raise StanzaError("bad-request", "commands are executed with an iq set")
        command = st.element().find(f"{{{NS_COMMANDS}}}command")
        if command is None:
            raise StanzaError("bad-request", "a <command/> is expected")
        node = command.get("node") or ""
        action = command.get("action") or "execute"
        if action not in ACTIONS:
            raise _command_error("bad-request", "malformed-action", f"no action {action!r}")
        spec = COMMANDS.get(node)
        if spec is None:
            raise StanzaError("item-not-found", "no such command")
        if not self.is_admin(origin):
            log.info("%s was refused command %s: not an admin", origin.full, node)
            raise StanzaError("forbidden", "the service administration commands are for admins")
        record = ADHOC.of(origin)
        sessionid = command.get("sessionid")
        if not sessionid:
            if action != "execute":
                raise _command_error("bad-request", "bad-sessionid", "no session to continue")
            return self._start(origin, st, spec, domain, record)
        session = self._session(record, sessionid, node)
        if action == "cancel":
            self._end(record, sessionid)
            return self._reply(origin, st, spec, sessionid, "canceled")
        allowed = self._actions(spec, session.stage)
        if action == "execute" or (action == "next" and "next" not in allowed):
            # execute: the execute='complete' every stage announces (§3.4). next at the last
            # stage: also complete, as Smack's ServiceAdministrationManager (4.3, 4.4) sends
            # its add-user and delete-user forms with action 'next'.
            action = "complete"
        if action not in allowed:
            raise _command_error("bad-request", "bad-action", f"{action} is not allowed here")
        stage = spec.stages[session.stage]
        submitted = _submitted(command)
        if action != "prev" and stage.fields:
            if submitted is None:
                raise _command_error("bad-request", "bad-payload", "the form is missing")
            missing = [
                f.var
                for f in stage.fields
                if f.required and not any(v.strip() for v in submitted.get(f.var, ()))
            ]
            if missing:
                raise _command_error(
                    "bad-request", "bad-payload", "required: " + ", ".join(missing)
                )
            session.values.update(
                (f.var, submitted[f.var]) for f in stage.fields if f.var in submitted
            )
        session.deadline = time.monotonic() + SESSION_LIFETIME
        if action in ("next", "prev"):
            session.stage += 1 if action == "next" else -1
            return self._stage(origin, st, spec, sessionid, session)
        self._end(record, sessionid)
        self._run(origin, st, spec, domain, sessionid, session.values)
        return None

    def _actions(self, spec: Command, stage: int) -> tuple[str, ...]:
        """What each stage allows: complete always (a later stage only reviews), next and
        prev between stages."""
        allowed: tuple[str, ...] = ("prev",) if stage > 0 else ()
        if stage + 1 < len(spec.stages):
            allowed += ("next",)
        return (*allowed, "complete")

    def _start(
        self, origin: C2SStream, st: Stanza, spec: Command, domain: str, record: AdhocRecord
    ) -> bytes | None:
        sessionid = secrets.token_urlsafe(12)
        if not spec.stages:
            self._run(origin, st, spec, domain, sessionid, {})
            return None
        now = time.monotonic()
        for old in [k for k, s in record.sessions.items() if s.deadline <= now]:
            self._end(record, old)
        while len(record.sessions) >= MAX_SESSIONS:
            self._end(record, next(iter(record.sessions)))  # the oldest
        values: dict[str, list[str]] = getattr(self, spec.prefill)(domain) if spec.prefill else {}
        session = record.sessions[sessionid] = CommandSession(
            spec.node, 0, values, now + SESSION_LIFETIME
        )
        return self._stage(origin, st, spec, sessionid, session)

    def _session(self, record: AdhocRecord, sessionid: str, node: str) -> CommandSession:
        session = record.sessions.get(sessionid)
        if session is None:
            if sessionid in record.ended:
                raise _command_error("not-allowed", "session-expired", "the session has ended")
            raise _command_error("bad-request", "bad-sessionid", "no such session")
        if session.node != node:
            raise _command_error("bad-request", "bad-sessionid", "a session of another command")
        if session.deadline <= time.monotonic():
            self._end(record, sessionid)
            raise _command_error("not-allowed", "session-expired", "the session timed out")
        return session

    def _end(self, record: AdhocRecord, sessionid: str) -> None:
        record.sessions.pop(sessionid, None)
        record.ended.append(sessionid)

    def _stage(
        self, origin: C2SStream, st: Stanza, spec: Command, sessionid: str, s: CommandSession
    ) -> bytes:
        stage = spec.stages[s.stage]
        if stage.fields:
            fields = "".join(_field_xml(f, s.values.get(f.var)) for f in stage.fields)
        else:
            # A review of what the earlier stages gathered: fixed fields (XEP-0004 §3.3),
            # one value each (Smack refuses a fixed field with more).
            fields = "".join(
                f"<field type='fixed' label={quoteattr(var)}><value>{escape(v)}</value></field>"
                for var, values in s.values.items()
                for v in values
            )
        allowed = self._actions(spec, s.stage)
        actions = (
            "<actions execute='complete'>" + "".join(f"<{a}/>" for a in allowed) + "</actions>"
        )
        form = _form("form", fields, stage.title, stage.instructions)
        return self._reply(origin, st, spec, sessionid, "executing", actions + form)

    def _reply(
        self,
        origin: C2SStream,
        st: Stanza,
        spec: Command,
        sessionid: str,
        status: str,
        payload: str = "",
    ) -> bytes:
        return iq_result(
            origin,
            st,
            f"<command xmlns='{NS_COMMANDS}' node={quoteattr(spec.node)} "
            f"sessionid={quoteattr(sessionid)} status='{status}' xml:lang='en'>"
            f"{payload}</command>",
        )

    def _run(
        self,
        origin: C2SStream,
        st: Stanza,
        spec: Command,
        domain: str,
        sessionid: str,
        values: dict[str, list[str]],
    ) -> None:
        run: Callable[[Any, str, str, dict[str, list[str]]], Awaitable[Outcome]]
        run = getattr(self, spec.run)

        async def step() -> bytes:
            try:
                form, notes = await run(origin, domain, spec.name, values)
            except CommandFailed as exc:
                form, notes = "", [("error", str(exc))]
                log.info("admin %s: %s failed: %s", origin.full, spec.name, exc)
            notes_xml = "".join(
                f"<note type='{kind}'>{escape(text)}</note>" for kind, text in notes
            )
            return self._reply(origin, st, spec, sessionid, "completed", notes_xml + form)

        origin.run_iq_step(st, step)

    # --- the commands (XEP-0133 §4) ----------------------------------------------------

    def _account(self, text: str, domain: str, bare_only: bool = True) -> tuple[str, str, str]:
        """(local, domain, resource) of an account JID of the administered host."""
        try:
            jid = parse_jid(text.strip())
        except JIDError as exc:
            raise CommandFailed(f"{text!r} is not a valid JID: {exc}") from None
        if not jid.local:
            raise CommandFailed(f"{text} is not an account JID (user@{domain})")
        if jid.domain != domain:
            raise CommandFailed(f"{jid.local}@{jid.domain} is not an account of {domain}")
        return jid.local, jid.domain, "" if bare_only else jid.resource

    @staticmethod
    def _one(values: dict[str, list[str]], var: str) -> str:
        found = values.get(var) or [""]
        return found[0]

    def _accounts(
        self, values: dict[str, list[str]], domain: str, bare_only: bool = True
    ) -> list[tuple[str, str, str]]:
        texts = [v for v in values.get("accountjids", ()) if v.strip()]
        if not texts:
            raise CommandFailed("no account given")
        return [self._account(text, domain, bare_only) for text in texts]

    async def add_user(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        local, _, _ = self._account(self._one(values, "accountjid"), domain)
        password = self._one(values, "password")
        if password != self._one(values, "password-verify"):
            raise CommandFailed("the passwords do not match")
        accounts = self.server.accounts
        if accounts.exists(domain, local):
            raise CommandFailed(f"{local}@{domain} exists already")
        try:
            # The same SCRAM credentials and password rules as XEP-0077 and the CLI.
            await self.server.run_blocking(lambda: accounts.create(domain, local, password))
        except AccountExists:
            raise CommandFailed(f"{local}@{domain} exists already") from None
        except UnusablePassword as exc:
            raise CommandFailed(str(exc)) from None
        log.info("admin %s added the account %s@%s", origin.full, local, domain)
        await self.account_created(domain, local)
        return "", [("info", f"{local}@{domain} was created")]

    async def delete_user(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        # A full JID names its account (the suite sends one): XEP-0133 §4.2 has no error
        # for it.
        targets = self._accounts(values, domain)
        if any(f"{local}@{domain}" == origin.bare for local, _, _ in targets):
            raise CommandFailed("an admin cannot delete their own account here (XEP-0077)")
        deleted, missing = [], []
        for local, _, _ in targets:
            try:
                # Its data in one transaction, then its sessions end (as XEP-0077 §3.2).
                self.server.remove_account(domain, local)
            except NoSuchAccount:
                missing.append(f"{local}@{domain}")
                continue
            deleted.append(f"{local}@{domain}")
            log.info("admin %s deleted the account %s@%s", origin.full, local, domain)
        notes = [("info", f"deleted: {', '.join(deleted)}")] if deleted else []
        if missing:
            notes.append(("error", f"no such account: {', '.join(missing)}"))
        return "", notes

    async def disable_user(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        return self._set_disabled(origin, domain, values, True)

    async def reenable_user(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        return self._set_disabled(origin, domain, values, False)

    def _set_disabled(
        self, origin: C2SStream, domain: str, values: dict[str, list[str]], disabled: bool
    ) -> Outcome:
        """§4.3: no more logins and the sessions end, the data stays; §4.4: logins again."""
        targets = self._accounts(values, domain)
        if disabled and any(f"{local}@{domain}" == origin.bare for local, _, _ in targets):
            raise CommandFailed("an admin cannot disable their own account")
        what = "disabled" if disabled else "re-enabled"
        done, missing = [], []
        for local, _, _ in targets:
            try:
                self.server.accounts.set_disabled(domain, local, disabled)
            except NoSuchAccount:
                missing.append(f"{local}@{domain}")
                continue
            if disabled:
                self.server.end_sessions(
                    domain, local, "not-authorized", "the account was disabled"
                )
            done.append(f"{local}@{domain}")
            log.info("admin %s %s the account %s@%s", origin.full, what, local, domain)
        notes = [("info", f"{what}: {', '.join(done)}")] if done else []
        if missing:
            notes.append(("error", f"no such account: {', '.join(missing)}"))
        return "", notes

    async def end_user_session(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        ended = 0
        for local, _, resource in self._accounts(values, domain, bare_only=False):
            bare = f"{local}@{domain}"
            # §4.5: a full JID ends that session only, a bare JID all of the account's.
            if resource:
                session = self.router.session(bare, resource)
                count = 0 if session is None else 1
                if session is not None:
                    session.close_with_error("policy-violation", ENDED)
            else:
                count = self.server.end_sessions(domain, local, "policy-violation", ENDED)
            ended += count
            log.info("admin %s ended %d session(s) of %s", origin.full, count, bare)
        return "", [("info", f"{ended} session(s) ended")]

    async def change_password(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        local, _, _ = self._account(self._one(values, "accountjid"), domain)
        password = self._one(values, "password")
        accounts = self.server.accounts
        try:
            await self.server.run_blocking(lambda: accounts.set_password(domain, local, password))
        except NoSuchAccount:
            raise CommandFailed(f"no account {local}@{domain}") from None
        except UnusablePassword as exc:
            raise CommandFailed(str(exc)) from None
        log.info("admin %s changed the password of %s@%s", origin.full, local, domain)
        return "", [("info", f"the password of {local}@{domain} was changed")]

    async def user_roster(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        roster = self.hub.get("roster")
        targets = self._accounts(values, domain)
        queries = []
        for local, _, _ in targets:
            if not self.server.accounts.exists(domain, local):
                raise CommandFailed(f"no account {local}@{domain}")
            items = "".join(item_xml(i) for i in roster.items(domain, local) if i.listed)
            queries.append(f"<query xmlns='{NS_ROSTER}'>{items}</query>")
        log.info(
            "admin %s read the roster of %s",
            origin.full,
            ", ".join(f"{t[0]}@{domain}" for t in targets),
        )
        # §4.8: the roster (RFC 6121 §2.1) inside the result form.
        jids = [f"{local}@{domain}" for local, _, _ in targets]
        fields = _result_field("accountjids", jids, "jid-multi")
        return _form("result", fields + "".join(queries)), []

    def _existing(self, local: str, domain: str) -> str:
        if not self.server.accounts.exists(domain, local):
            raise CommandFailed(f"no account {local}@{domain}")
        return f"{local}@{domain}"

    async def user_lastlogin(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        """§4.9: `lastlogin` (XEP-0082) is the latest resource binding of an account online
        now. Logins are not stored (XEP-0012's store keeps logouts): for an account offline
        the field is left out and a note says when its last session ended, if known."""
        targets = self._accounts(values, domain)
        if len(targets) != 1:
            raise CommandFailed("one account at a time: the result has one lastlogin field")
        bare = self._existing(targets[0][0], domain)
        log.info("admin %s asked the last login of %s", origin.full, bare)
        fields = _result_field("accountjids", [bare], "jid-multi")
        login = self._logins.get(bare)
        if login is not None and self.router.resources(bare):
            return _form("result", fields + _result_field("lastlogin", [stamp(login)])), []
        note = f"{bare} is offline; login times are not kept after logout"
        last = self.hub.get("last")
        logout = None if last is None else last.last_logout(domain, targets[0][0])
        if logout is not None:
            note += f"; its last session ended at {stamp(logout[0])}"
        return _form("result", fields), [("info", note)]

    async def user_stats(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        """§4.10, the fields of its example that are measured here: the IP addresses of the
        account's connected sessions, its roster size (the items it sees, RFC 6121 §2.1),
        the resources of its sessions. stanzaspersecond and loginsperminute are not
        counted, so not answered."""
        local, _, _ = self._account(self._one(values, "accountjid"), domain)
        bare = self._existing(local, domain)
        sessions = self.router.resources(bare)
        addresses = {s.connection.address for s in sessions.values() if s.connection is not None}
        roster = self.hub.get("roster")
        size = 0 if roster is None else sum(i.listed for i in roster.items(domain, local))
        log.info("admin %s asked the statistics of %s", origin.full, bare)
        fields = (
            _result_field("ipaddresses", sorted(addresses), "list-multi")
            + _result_field("rostersize", [str(size)])
            # text-multi: XEP-0004 §3.3 allows one value in a text-single.
            + _result_field("onlineresources", sorted(sessions), "text-multi")
        )
        return _form("result", fields), []

    def _users(self, domain: str, which: str) -> list[str]:
        if which == "registered":
            return [f"{local}@{domain}" for _, local in self.server.accounts.list(domain)]
        if which == "disabled":
            return [f"{local}@{domain}" for local in self.server.accounts.disabled(domain)]
        online: dict[str, bool] = {}
        for session in self.router.all_sessions():
            if session.domain == domain:
                online[session.bare] = online.get(session.bare, False) or session.available
        wanted = {"online": (True, False), "active": (True,), "idle": (False,)}[which]
        return sorted(bare for bare, available in online.items() if available in wanted)

    async def count_users(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        var, which = USER_SETS[name]
        count = len(self._users(domain, which))
        log.info("admin %s asked %s of %s", origin.full, name, domain)
        return _form("result", _result_field(var, [str(count)])), []

    async def list_users(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        var, which = USER_SETS[name]
        asked = self._one(values, "max_items") or str(LIST_DEFAULT)
        if asked not in MAX_ITEMS_OPTIONS:
            raise CommandFailed(f"max_items must be one of {', '.join(MAX_ITEMS_OPTIONS)}")
        users = self._users(domain, which)
        if asked != "none":
            users = users[: int(asked)]
        log.info("admin %s asked %s of %s", origin.full, name, domain)
        return _form("result", _result_field(var, users, "jid-multi")), []

    async def announce(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        # XEP-0004 §3.3 text-multi: one value per line.
        body = "\n".join(values.get("announcement", ()))
        sent = self._broadcast(domain, self._one(values, "subject"), body)
        log.info("admin %s announced to %d session(s) of %s", origin.full, sent, domain)
        return "", [("info", f"sent to {sent} session(s)")]

    def _broadcast(self, domain: str | None, subject: str, body: str) -> int:
        """§4.23: a headline (RFC 6121 §5.2.2: not stored offline, not for later sessions)
        from the host to each session it has now (every host's: `domain` None)."""
        subject_xml = f"<subject>{escape(subject)}</subject>" if subject else ""
        sent = 0
        for session in self.router.all_sessions():
            if domain is not None and session.domain != domain:
                continue
            session.send(
                f"<message from={quoteattr(session.domain)} to={quoteattr(session.full)} "
                f"type='headline'>{subject_xml}<body>{escape(body)}</body></message>".encode()
            )
            sent += 1
        return sent

    async def shutdown(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        """§4.31: the announcement (if any) to every session, then, after the delay, the
        server stops as on SIGTERM (every stream gets system-shutdown)."""
        delay = self._one(values, "delay") or "30"
        if delay not in {value for _, value in DELAY.options}:
            raise CommandFailed(f"delay must be one of {', '.join(v for _, v in DELAY.options)}")
        announcement = "\n".join(values.get("announcement", ()))
        if announcement.strip():
            self._broadcast(None, "", announcement)
        log.warning("admin %s shuts the server down in %s s", origin.full, delay)
        asyncio.get_running_loop().call_later(int(delay), self.server.request_stop)
        return "", [("info", f"the server stops in {delay} s")]

    # --- message of the day (§4.24-4.26) ------------------------------------------------

    def motd(self, domain: str) -> tuple[bytes, str] | None:
        """(id, text) of the host's message of the day; a new id for each text set."""
        if domain not in self._motd:
            raw = self.store.get(domain, "", MOTD_KEY)
            found = None
            if raw is not None:
                motd_id, _, text = raw.partition(b"\n")
                found = (motd_id, text.decode())
            self._motd[domain] = found
        return self._motd[domain]

    def current_motd(self, domain: str) -> dict[str, list[str]]:
        """edit-motd's form, filled with the current message (one value per line)."""
        found = self.motd(domain)
        return {} if found is None else {"motd": found[1].split("\n")}

    async def _put_host_record(self, domain: str, key: bytes, value: bytes | None) -> None:
        """A host's own record (the message of the day, the welcome message) set, or
        deleted with None; committed before the command completes."""
        await self.store.later(self.store.updating(domain, "", key, lambda _old: value))

    async def set_motd(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        text = "\n".join(values.get("motd", ()))
        motd_id = secrets.token_hex(8).encode()
        await self._put_host_record(domain, MOTD_KEY, motd_id + b"\n" + text.encode())
        self._motd[domain] = (motd_id, text)
        log.info("admin %s set the message of the day of %s", origin.full, domain)
        return "", [("info", "the message of the day is set")]

    async def delete_motd(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        await self._put_host_record(domain, MOTD_KEY, None)
        self._motd[domain] = None
        log.info("admin %s deleted the message of the day of %s", origin.full, domain)
        return "", [("info", "there is no message of the day")]

    # --- welcome message (§4.27-4.28) ---------------------------------------------------

    def welcome(self, domain: str) -> str | None:
        if domain not in self._welcome:
            raw = self.store.get(domain, "", WELCOME_KEY)
            self._welcome[domain] = None if raw is None else raw.decode()
        return self._welcome[domain]

    def current_welcome(self, domain: str) -> dict[str, list[str]]:
        """set-welcome's form, filled with the current message (§4.27)."""
        found = self.welcome(domain)
        return {} if found is None else {"welcome": found.split("\n")}

    async def set_welcome(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        text = "\n".join(values.get("welcome", ()))
        await self._put_host_record(domain, WELCOME_KEY, text.encode())
        self._welcome[domain] = text
        log.info("admin %s set the welcome message of %s", origin.full, domain)
        return "", [("info", "the welcome message is set")]

    async def delete_welcome(
        self, origin: C2SStream, domain: str, name: str, values: dict[str, list[str]]
    ) -> Outcome:
        await self._put_host_record(domain, WELCOME_KEY, None)
        self._welcome[domain] = None
        log.info("admin %s deleted the welcome message of %s", origin.full, domain)
        return "", [("info", "there is no welcome message")]

    async def account_created(self, domain: str, local: str) -> None:
        """A new account (XEP-0077 registration, add-user): the host's welcome message, if
        any, is kept for it (§4.27: "when they first log in"), stored before the caller
        answers so that the login that follows finds it. The message is the one set now."""
        text = self.welcome(domain)
        if text is None:
            return
        storage = self.server.storage
        assert storage is not None
        accounts_db = storage.database(account_records.DATABASE)
        keep = self.store.updating(domain, local, WELCOME_PENDING_KEY, lambda _o: text.encode())

        def work(txn: Any) -> None:
            # No record outlives its account (deleted meanwhile).
            if account_records.exists_in(txn, accounts_db, domain, local):
                keep(txn)

        try:
            await self.store.later(work)
        except (StorageFull, StorageFailed) as exc:
            log.error("cannot keep the welcome message for %s@%s: %s", local, domain, exc)
        except Exception:
            # The account exists and its creator is told so: the welcome is only a nicety.
            log.exception("cannot keep the welcome message for %s@%s", local, domain)

    def _send_welcome(self, session: C2SStream) -> None:
        """At the account's first login (initial presence): its welcome, once."""
        account = (session.domain, session.local)
        if account in self._welcome_sending:
            return  # sent to another session a moment ago, its record on its way out
        pending = self.store.get(session.domain, session.local, WELCOME_PENDING_KEY)
        if pending is None:
            return
        session.send(
            f"<message from={quoteattr(session.domain)} to={quoteattr(session.full)}>"
            f"<body>{escape(pending.decode())}</body></message>".encode()
        )
        self._welcome_sending.add(account)
        done = self.store.later(
            self.store.updating(session.domain, session.local, WELCOME_PENDING_KEY, lambda _o: None)
        )
        done.add_done_callback(lambda done: self._welcome_sent(account, done))

    def _welcome_sent(self, account: tuple[str, str], done: asyncio.Future[Any]) -> None:
        self._welcome_sending.discard(account)
        if not done.cancelled() and done.exception() is not None:
            log.warning("cannot record a welcome message as sent: %s", done.exception())

    def initial_presence(self, session: C2SStream) -> None:
        """§4.27: a new account's welcome message at its first login; §4.24: the message of
        the day to a user logging in, once per account and message (as ejabberd: a client
        that reconnects all day is not told again)."""
        self._send_welcome(session)
        found = self.motd(session.domain)
        if found is None:
            return
        motd_id, text = found
        account = (session.domain, session.local)
        if self._motd_recording.get(account) == motd_id:
            return  # sent to another session a moment ago, its record still on its way
        if self.store.get(session.domain, session.local, MOTD_SEEN_KEY) == motd_id:
            return
        session.send(
            f"<message from={quoteattr(session.domain)} to={quoteattr(session.full)}>"
            f"<body>{escape(text)}</body></message>".encode()
        )
        seen = self.store.later(
            self.store.updating(session.domain, session.local, MOTD_SEEN_KEY, lambda _o: motd_id)
        )
        self._motd_recording[account] = motd_id
        seen.add_done_callback(lambda done: self._motd_recorded(account, motd_id, done))

    def _motd_recorded(
        self, account: tuple[str, str], motd_id: bytes, done: asyncio.Future[Any]
    ) -> None:
        if self._motd_recording.get(account) == motd_id:
            del self._motd_recording[account]
        if not done.cancelled() and done.exception() is not None:
            # It only spares the user seeing the same message again.
            log.warning("cannot record a message of the day as seen: %s", done.exception())


MODULE = AdhocModule
