"""Channel bindings for SCRAM-*-PLUS (RFC 5802 §6; RFC 6120 §13.8 makes SCRAM-SHA-1-PLUS
mandatory to implement): what ties a client's authentication to the TLS connection it runs
on, so that a man in the middle who terminates TLS cannot relay it.

The types offered on a connection, in order of preference (XEP-0440 announces them):

- tls-exporter (RFC 9266): 32 bytes exported from the TLS session with the label
  "EXPORTER-Channel-Binding"; on TLS 1.3 only (RFC 9266 §3 allows TLS 1.2 only with the
  extended master secret, which Python's ssl module does not report).
- tls-unique (RFC 5929 §3): the first Finished message of the handshake; on TLS 1.2 only
  (RFC 9266 §4: undefined for TLS 1.3).
- tls-server-end-point (RFC 5929 §4): a hash of the server's certificate; on every version.
  XEP-0440 §security: servers MUST offer it.

Python's ssl module gives tls-unique only. The exported keying material comes from OpenSSL's
SSL_export_keying_material, called through ctypes on the `SSL *` under the ssl.SSLObject, in
the libssl that Python's own _ssl module is linked with (found through that module, so both
use one library). The pointer is read from CPython's `PySSLSocket` (`PyObject_HEAD`, then
`PyObject *Socket`, then `SSL *ssl`: the same layout since Python 3.2) and checked against
what the ssl module reports before it is used; where any of this is missing, tls-exporter is
not offered and the other types still are.
"""

from __future__ import annotations

import ctypes
import logging
import ssl
import sys
import weakref

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

log = logging.getLogger("fastxmpp.stream.channel_binding")

NS = "urn:xmpp:sasl-cb:0"  # XEP-0440
EXPORTER = "tls-exporter"
UNIQUE = "tls-unique"
END_POINT = "tls-server-end-point"
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"  # RFC 9266 §2
EXPORTER_LENGTH = 32
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

# The hash of each TLS context's certificate (tls-server-end-point), by context.
_end_points: weakref.WeakKeyDictionary[ssl.SSLContext, bytes] = weakref.WeakKeyDictionary()


def remember_certificate(context: ssl.SSLContext, cert_path: str) -> None:
    """Keep the tls-server-end-point value of the certificate `context` presents (the first
    one of the PEM file `cert_path`)."""
    try:
        with open(cert_path, "rb") as pem:
            certificate = x509.load_pem_x509_certificate(pem.read())
    except (OSError, ValueError) as exc:
        log.warning("no tls-server-end-point channel binding for %s: %s", cert_path, exc)
        return
    digest = end_point_hash(certificate)
    if digest is not None:
        _end_points[context] = digest


def end_point_hash(certificate: x509.Certificate) -> bytes | None:
    """RFC 5929 §4.1: the certificate hashed with its signature's hash function, SHA-256
    when that is MD5 or SHA-1; None when the signature has no hash function of its own
    (Ed25519, Ed448: RFC 5929 does not define the binding for them)."""
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None:
        return None
    if isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate.public_bytes(Encoding.DER))
    return digest.finalize()


class _Exporter:
    """SSL_export_keying_material on the SSL object under an ssl.SSLObject."""

    def __init__(self) -> None:
        import _ssl

        library = ctypes.CDLL(getattr(_ssl, "__file__", None))  # None: built into Python
        self._export = library.SSL_export_keying_material
        self._export.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_int,
        ]
        self._export.restype = ctypes.c_int
        self._is_server = library.SSL_is_server
        self._is_server.argtypes = [ctypes.c_void_p]
        self._is_server.restype = ctypes.c_int
        self._version = library.SSL_version
        self._version.argtypes = [ctypes.c_void_p]
        self._version.restype = ctypes.c_int
        # PySSLSocket: PyObject_HEAD (object's basic size), PyObject *Socket, SSL *ssl.
        self._offset = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)

    def export(self, tls: ssl.SSLObject) -> bytes | None:
        inner = getattr(tls, "_sslobj", None)
        if type(inner).__name__ != "_SSLSocket":
            return None
        pointer = ctypes.c_void_p.from_address(id(inner) + self._offset).value
        if not pointer:
            return None
        expected = _TLS_VERSIONS.get(tls.version() or "")
        if self._is_server(pointer) != 1 or self._version(pointer) != expected:
            return None  # not the SSL object we expect: no binding rather than a wrong one
        out = ctypes.create_string_buffer(EXPORTER_LENGTH)
        if not self._export(
            pointer, out, EXPORTER_LENGTH, EXPORTER_LABEL, len(EXPORTER_LABEL), None, 0, 0
        ):
            return None
        return out.raw


def _load_exporter() -> _Exporter | None:
    if sys.implementation.name != "cpython":
        return None
    try:
        return _Exporter()
    except (OSError, AttributeError, ImportError) as exc:
        log.info("no tls-exporter channel binding: %s", exc)
        return None


_exporter = _load_exporter()


def offered_types(tls: ssl.SSLObject | None) -> list[str]:
    """The channel-binding types this TLS connection can give data for, preferred first."""
    if tls is None:
        return []
    version = tls.version()
    types = []
    if version == "TLSv1.3" and _exporter is not None:
        types.append(EXPORTER)
    elif version == "TLSv1.2":
        types.append(UNIQUE)
    if tls.context in _end_points:
        types.append(END_POINT)
    return types


def binding_data(tls: ssl.SSLObject, kind: str) -> bytes | None:
    """The channel-binding data of `kind` for this connection (None: not available)."""
    if kind not in offered_types(tls):
        return None
    if kind == EXPORTER:
        assert _exporter is not None
        return _exporter.export(tls)
    if kind == UNIQUE:
        return tls.get_channel_binding(UNIQUE)
    return _end_points.get(tls.context)


def feature_xml(types: list[str]) -> str:
    """XEP-0440 §2: the <sasl-channel-binding/> stream feature."""
    if not types:
        return ""
    inner = "".join(f"<channel-binding type='{kind}'/>" for kind in types)
    return f"<sasl-channel-binding xmlns='{NS}'>{inner}</sasl-channel-binding>"
