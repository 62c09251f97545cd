"""Self-signed certificates for first start and `fastxmpp gencert`, and the checks behind
`check-config` for operator-supplied certificate/key pairs."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

import idna
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _subject_alt_names(domain: str) -> list[x509.GeneralName]:
    try:
        return [x509.IPAddress(ipaddress.ip_address(domain.strip("[]")))]
    except ValueError:
        pass
    # Certificates carry A-labels (RFC 6125 §6.4.2); our domains are kept as U-labels.
    name = idna.encode(domain).decode()
    # The wildcard covers service subdomains (conference.example.org, ...) added later.
    return [x509.DNSName(name), x509.DNSName(f"*.{name}")]


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        os.write(fd, data)
    finally:
        os.close(fd)


def generate_self_signed(domain: str, cert_path: Path, key_path: Path, days: int = 365) -> None:
    """Write a self-signed certificate for `domain` (and `*.domain`) with an EC P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clients' clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(domain)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_certificate(domain: str, cert_dir: Path) -> tuple[Path, Path]:
    """`cert_dir/<domain>.crt` and `.key`, generated (self-signed) when either is missing."""
    cert_path, key_path = cert_dir / f"{domain}.crt", cert_dir / f"{domain}.key"
    if not (cert_path.is_file() and key_path.is_file()):
        generate_self_signed(domain, cert_path, key_path)
    return cert_path, key_path


def not_valid_after(cert: str | Path) -> datetime.datetime | None:
    """When the (first) certificate of the PEM file `cert` expires; None if unreadable."""
    try:
        return x509.load_pem_x509_certificate(Path(cert).read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


def check_certificate(cert: Path, key: Path) -> str | None:
    """What is wrong with a certificate/key pair, or None when a server can use it."""
    try:
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        return f"cannot read {exc.filename}: {exc.strerror}"
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return f"{cert} is not a PEM certificate"
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return f"{key} is not an unencrypted PEM private key"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError:
        return f"key {key} does not match certificate {cert}"
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc < now:
        return f"certificate {cert} expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
    if certificate.not_valid_before_utc > now:
        return f"certificate {cert} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d}"
    return None
