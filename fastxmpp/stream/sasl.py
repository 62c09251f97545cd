"""SASL for client streams (RFC 6120 §6): SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802, RFC 7677,
through scramp) and PLAIN (RFC 4616, offered only over TLS); and the HT mechanisms of
draft-schmaus-kitten-sasl-ht with a XEP-0484 FAST token (inside SASL2, over TLS only).

A `SaslExchange` is driven by the stream: `start(initial)` and `respond(data)` return an
outcome: `Challenge(data)`, `Success(data, local)` or `Failure(condition, text)`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from scramp import ScramException, ScramMechanism

from ..jid import JIDError, normalize_local
from ..storage.accounts import AccountStore
from ..storage.fast_tokens import HT_DIGESTS, FastTokenStore, Verified

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1")
ALL_MECHANISMS = (*SCRAM_MECHANISMS, "PLAIN")
# A per-process secret so that made-up SCRAM salts for unknown accounts are stable within a
# run but not predictable: a client cannot tell an unknown account from a wrong password.
_DECOY_SECRET = os.urandom(32)


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    data: bytes
    local: str


@dataclass(frozen=True, slots=True)
class Failure:
    condition: str  # RFC 6120 §6.5
    text: str | None = None


Outcome = Challenge | Success | Failure


class SaslExchange:
    """One authentication attempt with one mechanism."""

    # The (prepared) localpart the client named, once known: failures count against it.
    username: str | None = None

    async def start(self, initial: bytes | None) -> Outcome:
        raise NotImplementedError

    async def respond(self, data: bytes) -> Outcome:
        raise NotImplementedError


def _decode_scram_username(name: str) -> str:
    # RFC 5802 §5.1: ',' and '=' are sent as '=2C' and '=3D'.
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramExchange(SaslExchange):
    def __init__(self, mechanism: str, domain: str, accounts: AccountStore) -> None:
        self._mechanism = mechanism
        self._domain = domain
        self._accounts = accounts
        self._local: str | None = None
        # Through a weak reference: the server object keeps its callback, and a bound method
        # would make the two a cycle that only the garbage collector frees.
        exchange = weakref.ref(self)

        def auth_info(username: str) -> tuple[bytes, bytes, bytes, int]:
            this = exchange()
            assert this is not None  # (it is the caller's)
            return this._auth_info(username)

        self._server = ScramMechanism(mechanism).make_server(auth_info)
        self._stage = 0

    def _auth_info(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        self.username = _decode_scram_username(username)
        try:
            local = normalize_local(_decode_scram_username(username))
            self.username = local
            info = self._accounts.scram_auth_info(self._domain, local, self._mechanism)
        except JIDError:
            info = None
            local = None
        if info is None:
            return self._decoy(username)
        self._local = local
        return info

    def _decoy(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        digest = hashlib.sha256 if self._mechanism.endswith("256") else hashlib.sha1
        salt = hmac.new(_DECOY_SECRET, username.encode(), hashlib.sha256).digest()[:16]
        size = digest().digest_size
        return salt, os.urandom(size), os.urandom(size), self._accounts.iterations

    async def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            # RFC 6120 §6.4.2: no initial response; ask for it with an empty challenge.
            return Challenge(b"")
        return self._client_first(initial)

    def _client_first(self, data: bytes) -> Outcome:
        try:
            self._server.set_client_first(data.decode())
            self._stage = 1
            return Challenge(self._server.get_server_first().encode())
        except (ScramException, UnicodeDecodeError, KeyError, ValueError) as exc:
            return Failure("malformed-request", str(exc))

    async def respond(self, data: bytes) -> Outcome:
        if self._stage == 0:
            return self._client_first(data)
        if self._stage != 1:
            return Failure("malformed-request", "unexpected response")
        self._stage = 2
        try:
            self._server.set_client_final(data.decode())
        except (ScramException, UnicodeDecodeError, KeyError, ValueError):
            return Failure("not-authorized")
        if self._local is None:
            return Failure("not-authorized")
        return Success(self._server.get_server_final().encode(), self._local)


class PlainExchange(SaslExchange):
    """RFC 4616. Checking the password costs a PBKDF2 run, done off the event loop; so does
    re-deriving credentials stored with fewer iterations than configured, after a
    successful check (the only moment the server has the password)."""

    def __init__(
        self,
        domain: str,
        accounts: AccountStore,
        run_blocking: Callable[[Callable[[], Any]], Awaitable[Any]],
    ) -> None:
        self._domain = domain
        self._accounts = accounts
        self._run_blocking = run_blocking

    async def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Challenge(b"")
        return await self.respond(initial)

    async def respond(self, data: bytes) -> Outcome:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure("malformed-request", "expected authzid NUL authcid NUL password")
        try:
            authzid, authcid, password = (p.decode() for p in parts)
            self.username = authcid
            local = normalize_local(authcid)
            self.username = local
        except (UnicodeDecodeError, JIDError):
            return Failure("not-authorized")
        if authzid and authzid != f"{local}@{self._domain}":
            # RFC 6120 §6.4.6: we do not let one account act as another.
            return Failure("invalid-authzid")
        if not password:
            return Failure("not-authorized")

        valid, credentials = await self._run_blocking(
            lambda: self._accounts.verify_password(self._domain, local, password)
        )
        if not valid:
            return Failure("not-authorized")
        if credentials is not None:
            self._accounts.replace_credentials(self._domain, local, credentials)
        return Success(b"", local)


class HashedTokenExchange(SaslExchange):
    """draft-schmaus-kitten-sasl-ht, without channel binding (-NONE): one message,
    `authcid NUL HMAC(token, "Initiator")`; the server's additional data on success is
    `HMAC(token, "Responder")`. The token is a XEP-0484 FAST token of the client
    `client` (its SASL2 user-agent id)."""

    def __init__(
        self,
        mechanism: str,
        domain: str,
        tokens: FastTokenStore,
        client: str,
        count: int | None,
        invalidate: bool,
    ) -> None:
        assert mechanism in HT_DIGESTS
        self._mechanism = mechanism
        self._domain = domain
        self._tokens = tokens
        self._client = client
        self._count = count
        self._invalidate = invalidate
        self.verified: Verified | None = None

    async def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            return Failure("malformed-request", "HT mechanisms send an initial response")
        return await self.respond(initial)

    async def respond(self, data: bytes) -> Outcome:
        if self.verified is not None:
            return Failure("malformed-request", "unexpected response")
        authcid, separator, initiator = data.partition(b"\0")
        if not separator:
            return Failure("malformed-request", "expected authcid NUL initiator hash")
        try:
            self.username = authcid.decode()
            local = normalize_local(self.username)
            self.username = local
        except (UnicodeDecodeError, JIDError):
            return Failure("credentials-expired")
        outcome = self._tokens.verify(
            self._domain,
            local,
            self._client,
            self._mechanism,
            initiator,
            self._count,
            self._invalidate,
        )
        if isinstance(outcome, str):
            # XEP-0484 §rules-servers: a token not (or no longer) trusted.
            return Failure(outcome)
        self.verified = outcome
        return Success(outcome.responder, local)


def offered_mechanisms(configured: tuple[str, ...], encrypted: bool) -> list[str]:
    """RFC 6120 §13.8 / RFC 4616 §6: PLAIN only on an encrypted stream."""
    return [m for m in configured if m != "PLAIN" or encrypted]
