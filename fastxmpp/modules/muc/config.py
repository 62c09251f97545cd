"""Room configuration (XEP-0045 §10.1.3, §10.2) as a XEP-0004 data form of FORM_TYPE
http://jabber.org/protocol/muc#roomconfig, and the room's disco#info features (§6.4)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ...errors import StanzaError
from ...jid import JIDError, parse_jid
from .vcard import AVATAR_HASH_FIELD

NS_DATA = "jabber:x:data"
FORM_TYPE = "http://jabber.org/protocol/muc#roomconfig"
ROOMINFO = "http://jabber.org/protocol/muc#roominfo"
WHOIS = ("moderators", "anyone")
ALLOW_PM = ("anyone", "participants", "moderators", "none")
ARCHIVING = ("default", "on", "off")


@dataclass
class RoomConfig:
    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    moderated: bool = False
    password_protected: bool = False
    password: str = ""
    max_users: int = 200
    whois: str = "moderators"  # "anyone": non-anonymous (§4.1)
    change_subject: bool = False  # occupants (not only moderators) may change the subject
    allow_invites: bool = False  # occupants (not only moderators/admins) may invite
    allow_pm: str = "anyone"  # who may send private messages (§7.5)
    history_length: int = 20  # muc#maxhistoryfetch: messages kept for newcomers
    # muc#roomconfig_enablearchiving (XEP-0313 room archive): "on"/"off" as the owner chose,
    # "default" as long as they did not: then `[muc] archive_rooms` decides (`archives`).
    archiving: str = "default"

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RoomConfig:
        """The configuration stored by `to_record`; ValueError for a value of another type
        than the field's (a corrupt record, which the store then quarantines)."""
        defaults = cls()
        values = {}
        for f in fields(cls):
            if f.name in record:
                value = record[f.name]
                if type(value) is not type(getattr(defaults, f.name)):
                    raise ValueError(f"room configuration {f.name}: {value!r:.40}")
                values[f.name] = value
        if values.get("archiving", "default") not in ARCHIVING:
            raise ValueError(f"room configuration archiving: {values['archiving']!r:.40}")
        return cls(**values)

    def archives(self, policy: str) -> bool:
        """Whether the room archives its messages, `policy` being `[muc] archive_rooms`."""
        if self.archiving != "default":
            return self.archiving == "on"
        return policy == "all" or (policy == "persistent" and self.persistent)

    def features(self) -> list[str]:
        """The room type features of disco#info (§6.4, §15.3)."""
        return [
            "muc_persistent" if self.persistent else "muc_temporary",
            "muc_public" if self.public else "muc_hidden",
            "muc_membersonly" if self.members_only else "muc_open",
            "muc_moderated" if self.moderated else "muc_unmoderated",
            "muc_passwordprotected" if self.password_protected else "muc_unsecured",
            "muc_nonanonymous" if self.whois == "anyone" else "muc_semianonymous",
        ]


def _field(
    var: str,
    ftype: str,
    label: str,
    values: list[str],
    options: tuple[str, ...] = (),
) -> str:
    value_xml = "".join(f"<value>{escape(v)}</value>" for v in values)
    option_xml = "".join(
        f"<option label={quoteattr(o)}><value>{escape(o)}</value></option>" for o in options
    )
    return (
        f"<field var={quoteattr(var)} type={quoteattr(ftype)} label={quoteattr(label)}>"
        f"{value_xml}{option_xml}</field>"
    )


def _bool(value: bool) -> list[str]:
    return ["1" if value else "0"]


def config_form(
    config: RoomConfig,
    owners: list[str],
    admins: list[str],
    max_history: int,
    archiving: bool | None = None,
) -> str:
    """The muc#roomconfig form an owner gets (§10.1.3, example of §15.5.3); `archiving`:
    whether the room archives now (None: the server keeps no room archives, no field)."""
    f = "muc#roomconfig_"
    archive_field = (
        ""
        if archiving is None
        else _field(f + "enablearchiving", "boolean", "Archive messages", _bool(archiving))
    )
    return (
        f"<x xmlns='{NS_DATA}' type='form'><title>Room configuration</title>"
        f"<field var='FORM_TYPE' type='hidden'><value>{FORM_TYPE}</value></field>"
        + _field(f + "roomname", "text-single", "Name", [config.name])
        + _field(f + "roomdesc", "text-single", "Description", [config.description])
        + _field(f + "persistentroom", "boolean", "Persistent", _bool(config.persistent))
        + _field(f + "publicroom", "boolean", "Listed in the directory", _bool(config.public))
        + _field(f + "membersonly", "boolean", "Members only", _bool(config.members_only))
        + _field(f + "moderatedroom", "boolean", "Moderated", _bool(config.moderated))
        + _field(
            f + "passwordprotectedroom",
            "boolean",
            "Password protected",
            _bool(config.password_protected),
        )
        + _field(f + "roomsecret", "text-private", "Password", [config.password])
        + _field(f + "maxusers", "text-single", "Maximum occupants", [str(config.max_users)])
        + _field(f + "whois", "list-single", "Who may see real JIDs", [config.whois], WHOIS)
        + _field(
            f + "changesubject",
            "boolean",
            "Occupants may change the subject",
            _bool(config.change_subject),
        )
        + _field(f + "allowinvites", "boolean", "Occupants may invite", _bool(config.allow_invites))
        + _field(f + "allowpm", "list-single", "Private messages", [config.allow_pm], ALLOW_PM)
        + _field(
            "muc#maxhistoryfetch",
            "text-single",
            f"Messages of history kept (0..{max_history})",
            [str(config.history_length)],
        )
        + archive_field
        + _field(f + "roomowners", "jid-multi", "Owners", owners)
        + _field(f + "roomadmins", "jid-multi", "Admins", admins)
        + "</x>"
    )


@dataclass
class SubmittedConfig:
    config: RoomConfig
    owners: list[str] | None  # None: the form did not carry the field
    admins: list[str] | None


def _values(form: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for field in form.findall(f"{{{NS_DATA}}}field"):
        var = field.get("var")
        if var:
            out[var] = [v.text or "" for v in field.findall(f"{{{NS_DATA}}}value")]
    return out


def _one(values: list[str]) -> str:
    return values[0] if values else ""


def _boolean(var: str, values: list[str]) -> bool:
    # XEP-0004 §3.3: boolean values are "0"/"1"/"false"/"true".
    text = _one(values).strip()
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise StanzaError("not-acceptable", f"{var} must be a boolean")


def _integer(var: str, values: list[str], low: int, high: int) -> int:
    try:
        number = int(_one(values).strip())
    except ValueError:
        raise StanzaError("not-acceptable", f"{var} must be a number") from None
    if not low <= number <= high:
        raise StanzaError("not-acceptable", f"{var} must be within {low}..{high}")
    return number


def _jids(var: str, values: list[str]) -> list[str]:
    out = []
    for text in values:
        if not text.strip():
            continue  # an empty <value/> is no JID (libpurple sends one for an empty list)
        try:
            jid = parse_jid(text.strip())
        except JIDError:
            raise StanzaError("not-acceptable", f"{var}: {text!r} is not a JID") from None
        if jid.bare not in out:
            out.append(jid.bare)
    return out


def parse_submission(form: Any, current: RoomConfig, limits: Any) -> SubmittedConfig:
    """Apply a submitted muc#roomconfig form onto a copy of `current` (fields the form does
    not carry keep their value); not-acceptable for a value out of policy (§10.1.3)."""
    values = _values(form)
    form_type = _one(values.get("FORM_TYPE", []))
    if form_type and form_type != FORM_TYPE:
        raise StanzaError("bad-request", f"FORM_TYPE must be {FORM_TYPE}")
    config = RoomConfig(**current.to_record())
    f = "muc#roomconfig_"
    texts = {
        "roomname": ("name", limits.max_name_length),
        "roomdesc": ("description", limits.max_description_length),
    }
    for var, (attr, limit) in texts.items():
        if f + var in values:
            text = _one(values[f + var])
            if len(text) > limit:
                raise StanzaError("not-acceptable", f"{var} is longer than {limit} characters")
            setattr(config, attr, text)
    booleans = {
        "persistentroom": "persistent",
        "publicroom": "public",
        "membersonly": "members_only",
        "moderatedroom": "moderated",
        "passwordprotectedroom": "password_protected",
        "changesubject": "change_subject",
        "allowinvites": "allow_invites",
    }
    for var, attr in booleans.items():
        if f + var in values:
            setattr(config, attr, _boolean(var, values[f + var]))
    if f + "enablearchiving" in values:
        wanted = _boolean("enablearchiving", values[f + "enablearchiving"])
        # The value the form showed is no choice: clients send every field back, and a
        # room made persistent in the same form then archives as `archive_rooms` says.
        if wanted != current.archives(limits.archive_rooms):
            config.archiving = "on" if wanted else "off"
    if f + "roomsecret" in values:
        secret = _one(values[f + "roomsecret"])
        if len(secret) > limits.max_name_length:
            raise StanzaError("not-acceptable", "the password is too long")
        config.password = secret
    if config.password_protected and not config.password:
        # §10.1.3: "because the password for a password-protected room is blank"
        raise StanzaError("not-acceptable", "a password-protected room needs a password")
    if f + "maxusers" in values:
        config.max_users = _integer("maxusers", values[f + "maxusers"], 1, limits.max_occupants)
    if "muc#maxhistoryfetch" in values:
        config.history_length = _integer(
            "maxhistoryfetch", values["muc#maxhistoryfetch"], 0, limits.max_history
        )
    if f + "whois" in values:
        whois = _one(values[f + "whois"])
        if whois not in WHOIS:
            raise StanzaError("not-acceptable", "whois must be moderators or anyone")
        config.whois = whois
    if f + "allowpm" in values:
        allow_pm = _one(values[f + "allowpm"])
        if allow_pm not in ALLOW_PM:
            raise StanzaError("not-acceptable", "allowpm: " + ", ".join(ALLOW_PM))
        config.allow_pm = allow_pm
    owners = _jids("roomowners", values[f + "roomowners"]) if f + "roomowners" in values else None
    admins = _jids("roomadmins", values[f + "roomadmins"]) if f + "roomadmins" in values else None
    return SubmittedConfig(config, owners, admins)


def roominfo_form(
    config: RoomConfig, occupants: int, subject: str, avatar_hashes: tuple[str, ...] = ()
) -> str:
    """The extended disco#info of a room (§6.4, muc#roominfo, XEP-0128), with the hashes of
    its avatar when it has one (XEP-0486 §3.3, §4)."""
    avatar = (
        _field(AVATAR_HASH_FIELD, "text-multi", "Avatar hash", list(avatar_hashes))
        if avatar_hashes
        else ""
    )
    return (
        f"<x xmlns='{NS_DATA}' type='result'>"
        f"<field var='FORM_TYPE' type='hidden'><value>{ROOMINFO}</value></field>"
        + _field("muc#roominfo_description", "text-single", "Description", [config.description])
        + _field("muc#roominfo_occupants", "text-single", "Occupants", [str(occupants)])
        + _field("muc#roominfo_subject", "text-single", "Subject", [subject])
        + _field(
            "muc#roomconfig_changesubject",
            "boolean",
            "Occupants may change the subject",
            _bool(config.change_subject),
        )
        + avatar
        + "</x>"
    )
