"""XEP-0030 Service Discovery for the server and, on their behalf, its accounts.

- The server (a domain served here): identity server/im "fastxmpp" and those modules
  declare (`ModuleHub.server_identities`: PEP's pubsub/pep), the features every module
  declares (`ModuleHub.server_features`), items that modules list through an
  optional `disco_items(domain) -> [(jid, name or None)]` method (none so far).
- An account's bare JID (§3.1, §4.1), or no 'to' (the sender's account, RFC 6120 §10.3.3):
  identity account/registered and
  `ModuleHub.account_features`. Following the Security Considerations (§7) to the letter:
  disco#info is answered only to the account itself and to entities the account lets see
  its presence (subscription "from" or "both", asked of the roster module), others get
  service-unavailable, exactly as for an account that does not exist, so nothing can be
  harvested. disco#items never lists resources: only what modules list through an optional
  `account_disco_items(requester_bare, local, domain) -> [(jid, node or None, name or None)]`
  (PEP nodes); modules add identities through an `account_identities` attribute of
  (category, type) pairs (XEP-0163 §3: pubsub/pep), and answer disco#info for a node of the
  account through an optional `account_node_info(requester_bare, local, domain, node)`
  returning the query's inner XML, or None (XEP-0060 §5.3), and disco#items for one
  through an optional `account_node_items(requester_bare, local, domain, node)` returning
  [(jid, name)], or None (XEP-0060 §5.5: a PEP node's items). disco#items of any other node
  of an account is an empty result (§8: as for an account that does not exist).
- Nodes a module serves at the server or at the asker's own account through optional
  `disco_node_info(origin, target, node)` and `disco_node_items(origin, target, node, jid)`
  (inner XML, or None: not its node): XEP-0050's command list and command nodes.
- Any other node: item-not-found (§3.2), except node#ver of the server's own caps.
- XEP-0157: the server's disco#info carries its contact addresses (`[contact]`) as a
  XEP-0128 serverinfo form, part of what its caps hash (XEP-0115 §5.1 includes forms).

XEP-0115 §6.3: every stream features element carries the server's caps (SHA-1 over its
disco#info, §5.1), and disco#info of `CAPS_NODE#ver` is the server's disco#info with that
node (§6.2), so a client that has seen this ver need not ask again. The features are those
the modules declare, fixed once the server has started: the ver is computed once.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from ..config import CONTACT_KINDS
from ..errors import StanzaError
from .base import Module, iq_result, sender_account
from .pep_caps import NS_CAPS, caps_hash

if TYPE_CHECKING:
    from .._parser import Stanza
    from ..stream.c2s import C2SStream

NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
SERVER_NAME = "fastxmpp"
CAPS_NODE = "https://pypi.org/project/fastxmpp/"  # XEP-0115 §4: the software's URI
NS_DATA = "jabber:x:data"
SERVERINFO = "http://jabber.org/network/serverinfo"  # XEP-0157 §3, XEP-0128's FORM_TYPE
PRESENCE_VISIBLE = ("from", "both")  # RFC 6121 §2.1.2.1: the contact receives presence


def may_see_presence(hub: Any, requester_bare: str, local: str, domain: str) -> bool:
    """Whether `requester_bare` may learn about local@domain's presence: the account itself,
    or a contact with a subscription "from" or "both" in the account's roster."""
    if requester_bare == f"{local}@{domain}":
        return True
    roster = hub.get("roster")
    if roster is None:
        return False
    return roster.subscription(domain, local, requester_bare) in PRESENCE_VISIBLE


class DiscoModule(Module):
    name = "disco"
    # XEP-0115 §7: the server supports caps (its own in stream features, its clients' for
    # PEP), so it lists the feature.
    features = (NS_INFO, NS_ITEMS, NS_CAPS)
    account_features = (NS_INFO, NS_ITEMS)
    _server_caps: tuple[str, str] | None = None  # computed at the first use

    def start(self) -> None:
        self.router.set_iq_handler(NS_INFO, self.info)
        # §8 rule 2: disco#items of an account that does not exist is an empty result.
        self.router.set_iq_handler(NS_ITEMS, self.items, for_missing_accounts=True)

    def server_info(self) -> str:
        """The inner XML of the server's disco#info (§3.1)."""
        identity = f"<identity category='server' type='im' name='{SERVER_NAME}'/>"
        identity += "".join(
            f"<identity category={quoteattr(c)} type={quoteattr(t)}/>"
            for c, t in self.hub.server_identities()
        )
        features = "".join(f"<feature var={quoteattr(f)}/>" for f in self.hub.server_features())
        return identity + features + self._contact_form()

    def _contact_form(self) -> str:
        """XEP-0157 §3: the configured contact addresses ([contact]) as a XEP-0128 form of
        FORM_TYPE http://jabber.org/network/serverinfo; none when none are configured."""
        configured = dataclasses.asdict(self.config.contact)
        fields = []
        for kind in CONTACT_KINDS:
            addresses = configured[kind]
            if addresses:
                values = "".join(f"<value>{escape(a)}</value>" for a in addresses)
                fields.append(f"<field var='{kind}-addresses'>{values}</field>")
        if not fields:
            return ""
        return (
            f"<x xmlns='{NS_DATA}' type='result'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{SERVERINFO}</value></field>{''.join(fields)}</x>"
        )

    def server_caps(self) -> tuple[str, str]:
        """(the caps <c/> stream feature, the node#ver it names) of the server (XEP-0115)."""
        if self._server_caps is None:
            query = etree.fromstring(f"<query xmlns='{NS_INFO}'>{self.server_info()}</query>")
            ver = caps_hash("sha-1", query)
            assert ver is not None  # one identity, distinct features: well-formed
            feature = (
                f"<c xmlns='{NS_CAPS}' hash='sha-1' node={quoteattr(CAPS_NODE)} "
                f"ver={quoteattr(ver)}/>"
            )
            self._server_caps = (feature, f"{CAPS_NODE}#{ver}")
        return self._server_caps

    def stream_features(self, stream: C2SStream) -> str:
        return self.server_caps()[0]

    def _query(self, st: Stanza, namespace: str) -> tuple[str | None, str]:
        """(node, node attribute XML) of a disco get."""
        if st.attrs.get("type") != "get":
            raise StanzaError("bad-request", "service discovery requests are iq get")
        query = st.element().find(f"{{{namespace}}}query")
        if query is None:
            raise StanzaError("bad-request", "a <query/> is expected")
        node = query.get("node")
        return node, "" if node is None else " node=" + quoteattr(node)

    def _node_answer(
        self, origin: C2SStream, target: tuple[str, ...] | None, node: str, items_of: str | None
    ) -> str | None:
        """The inner XML a module answers for a node of the server or of the asker's own
        account (XEP-0050 §2.2: the command list and command nodes): disco#items of the
        node at JID `items_of`, else its disco#info; None when no module serves the node."""
        for module in self.hub.modules.values():
            if items_of is not None:
                node_items = getattr(module, "disco_node_items", None)
                answer = None if node_items is None else node_items(origin, target, node, items_of)
            else:
                node_info = getattr(module, "disco_node_info", None)
                answer = None if node_info is None else node_info(origin, target, node)
            if answer is not None:
                result: str = answer
                return result
        return None

    # --- disco#info (§3) ---------------------------------------------------------------------

    def info(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        node, node_attr = self._query(st, NS_INFO)
        if node is not None:
            answer = self._node_answer(origin, target, node, None)
            if answer is not None:
                return iq_result(
                    origin, st, f"<query xmlns='{NS_INFO}'{node_attr}>{answer}</query>"
                )
        target = target or sender_account(origin)
        if not target[0]:
            # The server; XEP-0115 §6.2: node#ver of its caps is the same disco#info.
            if node is not None and node != self.server_caps()[1]:
                raise StanzaError("item-not-found", "no such node")
            payload = self.server_info()
            return iq_result(origin, st, f"<query xmlns='{NS_INFO}'{node_attr}>{payload}</query>")
        local, domain = target[0], target[1]
        if not may_see_presence(self.hub, origin.bare, local, domain):
            raise StanzaError("service-unavailable")
        for module in self.hub.modules.values():
            node_info = getattr(module, "account_node_info", None)
            answer = None if node_info is None else node_info(origin.bare, local, domain, node)
            if answer is not None:
                return iq_result(
                    origin, st, f"<query xmlns='{NS_INFO}'{node_attr}>{answer}</query>"
                )
        if node is not None:
            raise StanzaError("item-not-found", "no such node")
        identity = "<identity category='account' type='registered'/>" + "".join(
            f"<identity category={quoteattr(c)} type={quoteattr(t)}/>"
            for m in self.hub.modules.values()
            for c, t in getattr(m, "account_identities", ())
        )
        payload = "".join(f"<feature var={quoteattr(f)}/>" for f in self.hub.account_features())
        return iq_result(origin, st, f"<query xmlns='{NS_INFO}'>{identity}{payload}</query>")

    # --- disco#items (§4) --------------------------------------------------------------------

    def items(self, origin: C2SStream, st: Stanza, target: tuple[str, ...] | None) -> bytes:
        node, node_attr = self._query(st, NS_ITEMS)
        payload = ""
        if node is not None:
            asked = origin.bare if target is None else target[3] if target[0] else target[1]
            answer = self._node_answer(origin, target, node, asked)
            if answer is not None:
                return iq_result(
                    origin, st, f"<query xmlns='{NS_ITEMS}'{node_attr}>{answer}</query>"
                )
        target = target or sender_account(origin)
        if node is not None:
            if not target[0]:
                raise StanzaError("item-not-found", "no such node")
            # A node of an account: what a module lists there (XEP-0060 §5.5: a PEP node's
            # items), else an empty result (§8: never an error that would tell an account
            # from one that does not exist).
            for module in self.hub.modules.values():
                list_node_items = getattr(module, "account_node_items", None)
                found = (
                    None
                    if list_node_items is None
                    else list_node_items(origin.bare, *target[:2], node)
                )
                if found is not None:
                    payload = "".join(
                        f"<item jid={quoteattr(jid)} name={quoteattr(name)}/>"
                        for jid, name in found
                    )
                    break
        elif not target[0]:
            domain = target[1]
            for module in self.hub.modules.values():
                list_items = getattr(module, "disco_items", None)
                if list_items is None:
                    continue
                for jid, name in list_items(domain):
                    name_attr = "" if name is None else " name=" + quoteattr(name)
                    payload += f"<item jid={quoteattr(jid)}{name_attr}/>"
            # XEP-0114 components at subdomains of this host (gateways, bridges): clients
            # find them here.
            components = self.server.components
            for component in sorted(components.config if components is not None else ()):
                if component.endswith("." + domain):
                    payload += f"<item jid={quoteattr(component)}/>"
        else:
            for module in self.hub.modules.values():
                list_account_items = getattr(module, "account_disco_items", None)
                if list_account_items is None:
                    continue
                for jid, item_node, name in list_account_items(origin.bare, *target[:2]):
                    attrs = "" if item_node is None else " node=" + quoteattr(item_node)
                    attrs += "" if name is None else " name=" + quoteattr(name)
                    payload += f"<item jid={quoteattr(jid)}{attrs}/>"
        return iq_result(origin, st, f"<query xmlns='{NS_ITEMS}'{node_attr}>{payload}</query>")


MODULE = DiscoModule
