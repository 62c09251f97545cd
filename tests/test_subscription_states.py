"""Every row of RFC 6121 Appendix A, written out again from the RFC (not derived from the code's
tables), plus pre-approval (§3.4) and the server's automatic replies (§3.1.3)."""

from __future__ import annotations

import pytest

from fastxmpp.modules.subscription_states import (
    ALL_STATES,
    BOTH,
    FROM,
    FROM_OUT,
    NONE,
    NONE_IN,
    NONE_OUT,
    NONE_OUT_IN,
    TO,
    TO_IN,
    State,
    inbound,
    outbound,
)

# (state, forward?, new state) for each table.
A21_OUTBOUND_SUBSCRIBE = [
    (NONE, True, NONE_OUT),
    (NONE_OUT, True, NONE_OUT),
    (NONE_IN, True, NONE_OUT_IN),
    (NONE_OUT_IN, True, NONE_OUT_IN),
    (TO, True, TO),
    (TO_IN, True, TO_IN),
    (FROM, True, FROM_OUT),
    (FROM_OUT, True, FROM_OUT),
    (BOTH, True, BOTH),
]
A22_OUTBOUND_UNSUBSCRIBE = [
    (NONE, True, NONE),
    (NONE_OUT, True, NONE),
    (NONE_IN, True, NONE_IN),
    (NONE_OUT_IN, True, NONE_IN),
    (TO, True, NONE),
    (TO_IN, True, NONE_IN),
    (FROM, True, FROM),
    (FROM_OUT, True, FROM),
    (BOTH, True, FROM),
]
A23_OUTBOUND_SUBSCRIBED = [
    (NONE, False, NONE),
    (NONE_OUT, False, NONE_OUT),
    (NONE_IN, True, FROM),
    (NONE_OUT_IN, True, FROM_OUT),
    (TO, False, TO),
    (TO_IN, True, BOTH),
    (FROM, False, FROM),
    (FROM_OUT, False, FROM_OUT),
    (BOTH, False, BOTH),
]
A24_OUTBOUND_UNSUBSCRIBED = [
    (NONE, False, NONE),
    (NONE_OUT, False, NONE_OUT),
    (NONE_IN, True, NONE),
    (NONE_OUT_IN, True, NONE_OUT),
    (TO, False, TO),
    (TO_IN, True, TO),
    (FROM, True, NONE),
    (FROM_OUT, True, NONE_OUT),
    (BOTH, True, TO),
]
A31_INBOUND_SUBSCRIBE = [
    (NONE, True, NONE_IN),
    (NONE_OUT, True, NONE_OUT_IN),
    (NONE_IN, False, NONE_IN),
    (NONE_OUT_IN, False, NONE_OUT_IN),
    (TO, True, TO_IN),
    (TO_IN, False, TO_IN),
    (FROM, False, FROM),
    (FROM_OUT, False, FROM_OUT),
    (BOTH, False, BOTH),
]
A32_INBOUND_UNSUBSCRIBE = [
    (NONE, False, NONE),
    (NONE_OUT, False, NONE_OUT),
    (NONE_IN, True, NONE),
    (NONE_OUT_IN, True, NONE_OUT),
    (TO, False, TO),
    (TO_IN, True, TO),
    (FROM, True, NONE),
    (FROM_OUT, True, NONE_OUT),
    (BOTH, True, TO),
]
A33_INBOUND_SUBSCRIBED = [
    (NONE, False, NONE),
    (NONE_OUT, True, TO),
    (NONE_IN, False, NONE_IN),
    (NONE_OUT_IN, True, TO_IN),
    (TO, False, TO),
    (TO_IN, False, TO_IN),
    (FROM, False, FROM),
    (FROM_OUT, True, BOTH),
    (BOTH, False, BOTH),
]
A34_INBOUND_UNSUBSCRIBED = [
    (NONE, False, NONE),
    (NONE_OUT, True, NONE),
    (NONE_IN, False, NONE_IN),
    (NONE_OUT_IN, True, NONE_IN),
    (TO, True, NONE),
    (TO_IN, True, NONE_IN),
    (FROM, False, FROM),
    (FROM_OUT, True, FROM),
    (BOTH, True, FROM),
]


def rows(kind: str, table: list[tuple[State, bool, State]]) -> list[object]:
    return [pytest.param(kind, *row, id=f"{kind}-{row[0].label}") for row in table]


@pytest.mark.parametrize(
    ("kind", "state", "route", "new"),
    rows("subscribe", A21_OUTBOUND_SUBSCRIBE)
    + rows("unsubscribe", A22_OUTBOUND_UNSUBSCRIBE)
    + rows("subscribed", A23_OUTBOUND_SUBSCRIBED)
    + rows("unsubscribed", A24_OUTBOUND_UNSUBSCRIBED),
)
def test_outbound(kind: str, state: State, route: bool, new: State) -> None:
    outcome = outbound(state, kind)
    assert (outcome.forward, outcome.new) == (route, new)
    assert outcome.auto_reply is None


@pytest.mark.parametrize(
    ("kind", "state", "deliver", "new"),
    rows("subscribe", A31_INBOUND_SUBSCRIBE)
    + rows("unsubscribe", A32_INBOUND_UNSUBSCRIBE)
    + rows("subscribed", A33_INBOUND_SUBSCRIBED)
    + rows("unsubscribed", A34_INBOUND_UNSUBSCRIBED),
)
def test_inbound(kind: str, state: State, deliver: bool, new: State) -> None:
    outcome = inbound(state, kind)
    assert (outcome.forward, outcome.new) == (deliver, new)
    assert outcome.pre_approved is False


def test_every_table_covers_every_state() -> None:
    tables = [
        A21_OUTBOUND_SUBSCRIBE,
        A22_OUTBOUND_UNSUBSCRIBE,
        A23_OUTBOUND_SUBSCRIBED,
        A24_OUTBOUND_UNSUBSCRIBED,
        A31_INBOUND_SUBSCRIBE,
        A32_INBOUND_UNSUBSCRIBE,
        A33_INBOUND_SUBSCRIBED,
        A34_INBOUND_UNSUBSCRIBED,
    ]
    for table in tables:
        assert sorted(row[0] for row in table) == sorted(ALL_STATES)
    assert len(set(ALL_STATES)) == 9


@pytest.mark.parametrize("state", [FROM, FROM_OUT, BOTH])
def test_inbound_subscribe_when_already_subscribed_is_confirmed(state: State) -> None:
    # §3.1.3: the contact's server answers "subscribed" itself, nothing reaches the client.
    outcome = inbound(state, "subscribe")
    assert outcome == (False, state, "subscribed", False)


@pytest.mark.parametrize("state", [NONE, NONE_IN, NONE_OUT_IN, TO_IN])
def test_inbound_subscribe_without_subscription_is_not_answered(state: State) -> None:
    assert inbound(state, "subscribe").auto_reply is None


@pytest.mark.parametrize("state", [NONE, NONE_OUT, TO])
def test_subscribed_without_request_pre_approves(state: State) -> None:
    # §3.4.1: not routed, the state stays, the pre-approval is remembered.
    outcome = outbound(state, "subscribed")
    assert outcome == (False, state, None, True)


@pytest.mark.parametrize(
    ("state", "approved_state"), [(NONE, FROM), (NONE_OUT, FROM_OUT), (TO, BOTH)]
)
def test_pre_approved_request_is_accepted_at_once(state: State, approved_state: State) -> None:
    # §3.4.2: no delivery, the subscription is in place, "subscribed" goes back.
    outcome = inbound(state, "subscribe", pre_approved=True)
    assert outcome == (False, approved_state, "subscribed", False)


def test_unsubscribed_cancels_pre_approval() -> None:
    assert outbound(NONE, "unsubscribed", pre_approved=True).pre_approved is False


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_pre_approval_survives_own_requests(kind: str) -> None:
    assert outbound(NONE, kind, pre_approved=True).pre_approved is True


def test_state_labels_follow_the_rfc() -> None:
    assert [s.label for s in ALL_STATES] == [
        "None",
        "None + Pending Out",
        "None + Pending In",
        "None + Pending Out+In",
        "To",
        "To + Pending In",
        "From",
        "From + Pending Out",
        "Both",
    ]
