"""The subscription state machine of RFC 6121 Appendix A, as pure lookup tables.

A contact's state, as one account's server sees it, is the roster item's subscription
("none", "to", "from", "both") plus two hidden flags: Pending Out (the account asked for the
contact's presence and waits: the item's ask="subscribe") and Pending In (the contact asked
for the account's presence and waits). Only nine combinations exist (§A.1): "To" with Pending
Out, "From" with Pending In and "Both" with either cannot happen.

`outbound(state, kind)` is what the account's own server does with a subscription stanza the
account sends (§A.2: whether to route it, the new state); `inbound(state, kind)` is what the
server does with one addressed to the account (§A.3: whether to deliver it to the account's
client, the new state). Pre-approval (§3.4) and the server's automatic replies are decided
here too, so that every rule has one place and a unit test of its own.
"""

from __future__ import annotations

from typing import NamedTuple

SUBSCRIPTION_KINDS = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")


class State(NamedTuple):
    subscription: str  # "none", "to", "from", "both"
    pending_out: bool = False
    pending_in: bool = False

    @property
    def label(self) -> str:
        """The name Appendix A gives the state, e.g. "None + Pending Out+In"."""
        name = self.subscription.capitalize()
        pending = ("Out" if self.pending_out else "") + (
            "+In" if self.pending_out and self.pending_in else "In" if self.pending_in else ""
        )
        return f"{name} + Pending {pending}" if pending else name

    @property
    def receives_presence(self) -> bool:
        """The account sees the contact's presence (subscription "to" or "both")."""
        return self.subscription in ("to", "both")

    @property
    def sends_presence(self) -> bool:
        """The contact sees the account's presence (subscription "from" or "both")."""
        return self.subscription in ("from", "both")


NONE = State("none")
NONE_OUT = State("none", pending_out=True)
NONE_IN = State("none", pending_in=True)
NONE_OUT_IN = State("none", pending_out=True, pending_in=True)
TO = State("to")
TO_IN = State("to", pending_in=True)
FROM = State("from")
FROM_OUT = State("from", pending_out=True)
BOTH = State("both")
ALL_STATES = (NONE, NONE_OUT, NONE_IN, NONE_OUT_IN, TO, TO_IN, FROM, FROM_OUT, BOTH)


class Outcome(NamedTuple):
    """What the server does: `forward` is "route" for outbound, "deliver" for inbound;
    `new` the state afterwards; `auto_reply` a subscription stanza the server itself sends
    back on the account's behalf (§3.1.3: "subscribed" when the contact is already allowed or
    pre-approved); `pre_approved` the pre-approval flag afterwards (§3.4)."""

    forward: bool
    new: State
    auto_reply: str | None = None
    pre_approved: bool = False


# --- §A.2: the account's server, for stanzas the account sends ------------------------------
# kind -> {state: (route?, new state)}

_OUTBOUND: dict[str, dict[State, tuple[bool, State]]] = {
    # §A.2.1
    "subscribe": {
        NONE: (True, NONE_OUT),
        NONE_OUT: (True, NONE_OUT),
        NONE_IN: (True, NONE_OUT_IN),
        NONE_OUT_IN: (True, NONE_OUT_IN),
        TO: (True, TO),
        TO_IN: (True, TO_IN),
        FROM: (True, FROM_OUT),
        FROM_OUT: (True, FROM_OUT),
        BOTH: (True, BOTH),
    },
    # §A.2.2
    "unsubscribe": {
        NONE: (True, NONE),
        NONE_OUT: (True, NONE),
        NONE_IN: (True, NONE_IN),
        NONE_OUT_IN: (True, NONE_IN),
        TO: (True, NONE),
        TO_IN: (True, NONE_IN),
        FROM: (True, FROM),
        FROM_OUT: (True, FROM),
        BOTH: (True, FROM),
    },
    # §A.2.3
    "subscribed": {
        NONE: (False, NONE),
        NONE_OUT: (False, NONE_OUT),
        NONE_IN: (True, FROM),
        NONE_OUT_IN: (True, FROM_OUT),
        TO: (False, TO),
        TO_IN: (True, BOTH),
        FROM: (False, FROM),
        FROM_OUT: (False, FROM_OUT),
        BOTH: (False, BOTH),
    },
    # §A.2.4
    "unsubscribed": {
        NONE: (False, NONE),
        NONE_OUT: (False, NONE_OUT),
        NONE_IN: (True, NONE),
        NONE_OUT_IN: (True, NONE_OUT),
        TO: (False, TO),
        TO_IN: (True, TO),
        FROM: (True, NONE),
        FROM_OUT: (True, NONE_OUT),
        BOTH: (True, TO),
    },
}

# §3.4.1: a "subscribed" sent when the contact has not asked (and is not yet allowed)
# pre-approves the contact; these are the states where that applies.
_PRE_APPROVABLE = frozenset((NONE, NONE_OUT, TO))


def outbound(state: State, kind: str, pre_approved: bool = False) -> Outcome:
    """§A.2 for a subscription stanza of type `kind` the account sends about a contact in
    `state`; `pre_approved`: the contact is pre-approved now."""
    route, new = _OUTBOUND[kind][state]
    if kind == "subscribed" and state in _PRE_APPROVABLE:
        # §3.4.1: not routed; remembered, and used when the contact's request arrives.
        return Outcome(False, new, pre_approved=True)
    if kind == "unsubscribed":
        # §3.4.1: "unsubscribed" cancels a pre-approval.
        return Outcome(route, new, pre_approved=False)
    return Outcome(route, new, pre_approved=pre_approved and not new.sends_presence)


# --- §A.3: the account's server, for stanzas addressed to the account ------------------------
# kind -> {state: (deliver?, new state)}

_INBOUND: dict[str, dict[State, tuple[bool, State]]] = {
    # §A.3.1 (From, From + Pending Out and Both: the server answers "subscribed" itself)
    "subscribe": {
        NONE: (True, NONE_IN),
        NONE_OUT: (True, NONE_OUT_IN),
        NONE_IN: (False, NONE_IN),
        NONE_OUT_IN: (False, NONE_OUT_IN),
        TO: (True, TO_IN),
        TO_IN: (False, TO_IN),
        FROM: (False, FROM),
        FROM_OUT: (False, FROM_OUT),
        BOTH: (False, BOTH),
    },
    # §A.3.2
    "unsubscribe": {
        NONE: (False, NONE),
        NONE_OUT: (False, NONE_OUT),
        NONE_IN: (True, NONE),
        NONE_OUT_IN: (True, NONE_OUT),
        TO: (False, TO),
        TO_IN: (True, TO),
        FROM: (True, NONE),
        FROM_OUT: (True, NONE_OUT),
        BOTH: (True, TO),
    },
    # §A.3.3
    "subscribed": {
        NONE: (False, NONE),
        NONE_OUT: (True, TO),
        NONE_IN: (False, NONE_IN),
        NONE_OUT_IN: (True, TO_IN),
        TO: (False, TO),
        TO_IN: (False, TO_IN),
        FROM: (False, FROM),
        FROM_OUT: (True, BOTH),
        BOTH: (False, BOTH),
    },
    # §A.3.4
    "unsubscribed": {
        NONE: (False, NONE),
        NONE_OUT: (True, NONE),
        NONE_IN: (False, NONE_IN),
        NONE_OUT_IN: (True, NONE_IN),
        TO: (True, NONE),
        TO_IN: (True, NONE_IN),
        FROM: (False, FROM),
        FROM_OUT: (True, FROM),
        BOTH: (True, FROM),
    },
}

# §3.4.2: a pre-approved request is accepted at once: the state "subscribed" would give.
_APPROVED_AT_ONCE = {NONE: FROM, NONE_OUT: FROM_OUT, TO: BOTH}


def inbound(state: State, kind: str, pre_approved: bool = False) -> Outcome:
    """§A.3 for a subscription stanza of type `kind` from a contact in `state`."""
    deliver, new = _INBOUND[kind][state]
    if kind == "subscribe":
        if state.sends_presence:
            # §3.1.3: already subscribed: the server confirms on the account's behalf.
            return Outcome(False, state, auto_reply="subscribed")
        if pre_approved and state in _APPROVED_AT_ONCE:
            # §3.4.2: not delivered; approved on the account's behalf.
            return Outcome(False, _APPROVED_AT_ONCE[state], auto_reply="subscribed")
    return Outcome(deliver, new, pre_approved=pre_approved and not new.sends_presence)
