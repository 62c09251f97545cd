"""SASL for client streams (RFC 6120 §6): SCRAM-SHA-1, SCRAM-SHA-256 (RFC 5802, RFC 7677)
with their channel-binding -PLUS variants, and PLAIN (RFC 4616, offered only over TLS); and
the HT mechanisms of draft-schmaus-kitten-sasl-ht with a XEP-0484 FAST token (inside SASL2,
over TLS only).

A `SaslExchange` is driven by the stream: `start(initial)` and `respond(data)` return an
outcome: `Challenge(data)`, `Success(data, local)` or `Failure(condition, text)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..jid import JIDError, normalize_local
from ..storage.accounts import AccountStore
from ..storage.fast_tokens import HT_DIGESTS, FastTokenStore, Verified
from . import channel_binding

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


# RFC 6120 §6.5.1 <account-disabled/>, told only to whoever proved the password.
DISABLED = "an administrator has disabled this account"


@dataclass(frozen=True, slots=True)
class Failure:
    condition: str  # RFC 6120 §6.5
    text: str | None = None
    # Whether a credential was tested: a refusal before any proof (a channel binding the
    # client cannot have) guesses no password, so it does not count against the address
    # and the account ([limits] auth_failures_per_*).
    tested: bool = True


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


# RFC 5802 §7: a saslname escapes ',' and '=' and holds no other '='; a nonce is printable
# ASCII without ','.
_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)+")
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_DIGESTS = {"SCRAM-SHA-1": hashlib.sha1, "SCRAM-SHA-256": hashlib.sha256}


class ScramExchange(SaslExchange):
    """The server side of SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677), and of their
    -PLUS variants with channel binding (RFC 5802 §6, stream/channel_binding.py). Written
    here, not through scramp (which derives the stored credentials): scramp refuses the
    tls-exporter binding (RFC 9266) that TLS 1.3 clients use, and any authzid in the GS2
    header, which RFC 5802 §5.1 allows.

    `tls`: the connection's ssl.SSLObject (None on a stream without TLS of its own);
    `bindings_offered`: whether this stream offered -PLUS mechanisms, so that a client that
    says it supports channel binding but thinks the server does not ('y') is refused: a man
    in the middle stripped them (RFC 5802 §6)."""

    def __init__(
        self,
        mechanism: str,
        domain: str,
        accounts: AccountStore,
        tls: ssl.SSLObject | None = None,
        bindings_offered: bool = False,
    ) -> None:
        self._plus = mechanism.endswith("-PLUS")
        self._mechanism = mechanism.removesuffix("-PLUS")  # the credentials' mechanism
        self._digest = _DIGESTS[self._mechanism]
        self._domain = domain
        self._accounts = accounts
        self._tls = tls
        self._bindings_offered = bindings_offered
        self._local: str | None = None
        self._stage = 0
        self._gs2_header = b""
        self._binding = b""  # the channel-binding data (p=...), after the GS2 header
        self._authzid: str | None = None
        self.binding: str | None = None  # the channel-binding type used (p=<type>)
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._keys: tuple[bytes, bytes] = (b"", b"")  # StoredKey, ServerKey
        self._disabled = False  # the account is disabled (XEP-0133 disable-user)

    def _auth_info(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        self.username = _decode_scram_username(username)
        try:
            local = normalize_local(_decode_scram_username(username))
            self.username = local
            # A disabled account is exchanged as any other: only a right proof hears of it.
            info, self._disabled = self._accounts.scram_credentials(
                self._domain, local, self._mechanism
            )
        except JIDError:
            info = None
            local = None
        if info is None:
            return self._decoy(username)
        self._local = local
        return info

    def _decoy(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        salt = hmac.new(_DECOY_SECRET, username.encode(), hashlib.sha256).digest()[:16]
        size = self._digest().digest_size
        return salt, os.urandom(size), os.urandom(size), self._accounts.iterations

    async def start(self, initial: bytes | None) -> Outcome:
        if initial is None:
            # RFC 6120 §6.4.2: no initial response; ask for it with an empty challenge.
            return Challenge(b"")
        return self._client_first(initial)

    def _channel_binding(self, flag: str) -> Failure | None:
        """The GS2 channel-binding flag (RFC 5802 §5.1 gs2-cbind-flag) checked against the
        mechanism and what this stream offered; the binding data kept for `p=`."""
        if flag == "n" or flag == "y":
            if self._plus:
                return Failure("malformed-request", f"{self._mechanism}-PLUS needs p=<type>")
            if flag == "y" and self._bindings_offered:
                # RFC 5802 §6: the client would have bound; someone removed -PLUS.
                return Failure("not-authorized", "the server supports channel binding", False)
            return None
        if not flag.startswith("p="):
            return Failure("malformed-request", "the GS2 flag must be n, y or p=<type>")
        if not self._plus:
            return Failure("malformed-request", "channel binding needs a -PLUS mechanism")
        kind = flag[2:]
        data = None if self._tls is None else channel_binding.binding_data(self._tls, kind)
        if data is None:
            return Failure(
                "not-authorized", f"no {kind!r} channel binding on this connection", False
            )
        self._binding = data
        self.binding = kind
        return None

    def _client_first(self, data: bytes) -> Outcome:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return Failure("malformed-request", "not UTF-8")
        header = text.split(",", 2)
        if len(header) != 3:
            return Failure("malformed-request", "expected a GS2 header")
        flag, authzid, bare = header
        failure = self._channel_binding(flag)
        if failure is not None:
            return failure
        if authzid:
            if not authzid.startswith("a=") or not _SASLNAME.fullmatch(authzid[2:]):
                return Failure("malformed-request", "bad authzid")
            self._authzid = _decode_scram_username(authzid[2:])
        fields = bare.split(",")
        if fields[0].startswith("m="):
            # RFC 5802 §5.1: a mandatory extension this server does not know.
            return Failure("malformed-request", "SCRAM extensions are not supported")
        if (
            len(fields) < 2
            or not fields[0].startswith("n=")
            or not _SASLNAME.fullmatch(fields[0][2:])
            or not fields[1].startswith("r=")
            or not _NONCE.fullmatch(fields[1][2:])
        ):
            return Failure("malformed-request", "expected n=<user>,r=<nonce>")
        salt, stored_key, server_key, iterations = self._auth_info(fields[0][2:])
        self._keys = (stored_key, server_key)
        self._gs2_header = f"{flag},{authzid},".encode()
        self._client_first_bare = bare
        self._nonce = fields[1][2:] + secrets.token_urlsafe(18)
        salt_text = base64.b64encode(salt).decode()
        self._server_first = f"r={self._nonce},s={salt_text},i={iterations}"
        self._stage = 1
        return Challenge(self._server_first.encode())

    async def respond(self, data: bytes) -> Outcome:
        if self._stage == 0:
            return self._client_first(data)
        if self._stage != 1:
            return Failure("malformed-request", "unexpected response")
        self._stage = 2
        try:
            text = data.decode()
            without_proof, separator, proof_text = text.rpartition(",p=")
            fields = without_proof.split(",")
            if not separator or len(fields) < 2:
                raise ValueError("expected c=...,r=...,p=...")
            if not fields[0].startswith("c=") or not fields[1].startswith("r="):
                raise ValueError("expected c=...,r=...,p=...")
            bound = binascii.a2b_base64(fields[0][2:], strict_mode=True)
            proof = binascii.a2b_base64(proof_text, strict_mode=True)
        except (UnicodeDecodeError, ValueError, binascii.Error):
            return Failure("malformed-request", "bad final message")
        # RFC 5802 §6: c= is the GS2 header of the first message and the binding data.
        if not hmac.compare_digest(bound, self._gs2_header + self._binding):
            return Failure("not-authorized", "channel binding mismatch")
        if fields[1][2:] != self._nonce:
            return Failure("not-authorized", "nonce mismatch")
        stored_key, server_key = self._keys
        message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, message, self._digest).digest()
        if len(proof) != len(signature):
            return Failure("not-authorized")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(self._digest(client_key).digest(), stored_key):
            return Failure("not-authorized")
        if self._local is None:
            return Failure("not-authorized")
        if self._authzid is not None and self._authzid != f"{self._local}@{self._domain}":
            return Failure("invalid-authzid")  # RFC 6120 §6.4.6: no acting as another
        if self._disabled:
            return Failure("account-disabled", DISABLED)  # RFC 6120 §6.5.1
        verifier = hmac.new(server_key, message, self._digest).digest()
        return Success(b"v=" + base64.b64encode(verifier), self._local)


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
            if self._accounts.is_disabled(self._domain, local) and await self._run_blocking(
                lambda: self._accounts.check_password(
                    self._domain, local, password, disabled_too=True
                )
            ):
                return Failure("account-disabled", DISABLED)  # RFC 6120 §6.5.1
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


def offered_mechanisms(
    configured: tuple[str, ...], encrypted: bool, binding: bool = False
) -> list[str]:
    """RFC 6120 §13.8 / RFC 4616 §6: PLAIN only on an encrypted stream; with `binding` (the
    connection has channel-binding data to offer) each SCRAM mechanism's -PLUS variant
    too, first: the stronger are preferred in the order they are offered."""
    plus = [f"{m}-PLUS" for m in configured if binding and m in SCRAM_MECHANISMS]
    return plus + [m for m in configured if m != "PLAIN" or encrypted]
