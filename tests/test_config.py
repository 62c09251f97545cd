"""TOML configuration: defaults, the example file, path resolution, and problems reported all
at once with the line they come from; certificate checks."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastxmpp.certs import check_certificate, ensure_certificate, generate_self_signed
from fastxmpp.config import (
    C2SConfig,
    ConfigError,
    HttpConfig,
    LimitsConfig,
    ListenerConfig,
    Problem,
    StorageConfig,
    check_config,
    load_config,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"

MINIMAL = """\
[[listeners]]
address = "127.0.0.1"

[hosts."example.org"]
"""


def write(tmp_path: Path, text: str, name: str = "fastxmpp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_config_is_valid_and_matches_the_defaults() -> None:
    assert check_config(EXAMPLE) == []
    config = load_config(EXAMPLE)
    assert list(config.hosts) == ["localhost"]
    assert config.hosts["localhost"].cert is None and config.hosts["localhost"].key is None
    assert config.listeners == (
        ListenerConfig("c2s", "127.0.0.1", 5222),
        ListenerConfig("http", "127.0.0.1", 5280, "none"),
        ListenerConfig("http", "127.0.0.1", 5281, "direct"),
    )
    # The example documents the defaults: it must say exactly what leaving a key out does.
    assert config.c2s == C2SConfig()
    assert config.limits == LimitsConfig()
    assert config.storage == StorageConfig()
    for section in (
        "roster",
        "offline",
        "ping",
        "register",
        "legacy",
        "version",
        "http",
        "upload",
    ):
        default = type(getattr(config, section))()
        assert getattr(config, section) == default, section
    assert config.log_level == "info"
    assert config.data_dir == REPO / "var"
    assert config.source == EXAMPLE


def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert list(config.hosts) == ["localhost"]
    # HTTP (WebSocket) on loopback as Prosody and ejabberd serve it, on 5280, and HTTPS on
    # 5281 as Prosody does (XEP-0363 upload slots name it: §4 asks for TLS).
    assert config.listeners == (
        ListenerConfig("c2s", "127.0.0.1", 5222),
        ListenerConfig("http", "127.0.0.1", 5280, "none"),
        ListenerConfig("http", "127.0.0.1", 5281, "direct"),
    )
    assert config.data_dir == tmp_path / "var"
    assert config.log_level == "info"
    assert config.source is None
    assert check_config(None) == []


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.listeners == (ListenerConfig("c2s", "127.0.0.1", 5222),)
    assert config.data_dir == tmp_path / "var"
    assert config.c2s.resource_conflict == "replace"
    assert config.c2s.sasl_mechanisms == ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")


def test_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[server]
data_dir = "/srv/xmpp"
log_level = "DEBUG"

[[listeners]]
address = "::"
port = 0

[[listeners]]
kind = "c2s"
address = "192.0.2.7"
port = 5322

[hosts."Example.ORG."]
[hosts.localhost]

[c2s]
require_encryption = false
resource_conflict = "rename"
max_sasl_failures = 5
auth_timeout = 10
sasl_mechanisms = ["SCRAM-SHA-1"]

[limits]
max_stanza_size = 65536
max_depth = 16
max_attributes = 8

[storage]
map_size = 1048576
scram_iterations = 10000
""",
    )
    config = load_config(path)
    assert list(config.hosts) == ["example.org", "localhost"]  # normalized names
    assert config.hosts["example.org"].name == "example.org"
    assert config.listeners == (
        ListenerConfig("c2s", "::", 0),
        ListenerConfig("c2s", "192.0.2.7", 5322),
    )
    assert config.data_dir == Path("/srv/xmpp")
    assert config.log_level == "debug"
    assert config.c2s == C2SConfig(False, "rename", 5, 10.0, ("SCRAM-SHA-1",))
    assert isinstance(config.c2s.auth_timeout, float)
    assert config.limits == LimitsConfig(65536, 16, 8)
    assert config.storage == StorageConfig(1048576, 10000)


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = write(
        tmp_path / "etc",
        """\
[server]
data_dir = "../data"

[[listeners]]
address = "127.0.0.1"

[hosts."example.org"]
cert = "tls/example.crt"
key = "/abs/example.key"
""",
    )
    config = load_config(path)
    assert config.data_dir == tmp_path / "etc" / ".." / "data"
    assert config.hosts["example.org"].cert == tmp_path / "etc" / "tls" / "example.crt"
    assert config.hosts["example.org"].key == Path("/abs/example.key")


BROKEN = """\
[server]
data_dir = 5
log_level = "loud"
colour = "blue"

[[listeners]]
kind = "bosh-over-carrier-pigeon"
address = "127.0.0.1"
port = 70000

[[listeners]]
port = 5222

[hosts."exa mple.org"]

[hosts."example.org"]
cert = "example.crt"

[c2s]
require_encryption = "yes"
resource_conflict = "fight"
sasl_mechanisms = ["PLAIN", "CRAM-MD5"]
max_sasl_failures = true
auth_timeout = 0

[limits]
max_depth = -1
max_stanza_size = 100

[storage]
  scram_iterations = 10

[extra]
"""


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    problems = check_config(write(tmp_path, BROKEN))
    found = [(p.line, p.message.split(" ")[0]) for p in problems]
    assert found == [
        (2, "server.data_dir"),
        (3, "server.log_level"),
        (4, "unknown"),  # server.colour
        (7, "listeners[0].kind"),
        (9, "listeners[0].port"),
        (11, "listeners[1]"),  # no address: points at the [[listeners]] header
        (14, "host"),  # not a valid domain
        (17, "host"),  # cert without key
        (20, "c2s.require_encryption"),
        (21, "c2s.resource_conflict"),
        (22, "c2s.sasl_mechanisms"),
        (23, "c2s.max_sasl_failures"),
        (24, "c2s.auth_timeout"),
        (27, "limits.max_depth"),
        (28, "limits.max_stanza_size"),
        (31, "storage.scram_iterations"),
        (33, "unknown"),  # [extra]
    ]
    messages = {p.line: p.message for p in problems}
    assert "colour" in messages[4]
    assert "address" in messages[11]
    assert "cert is given without key" in messages[17]
    assert "CRAM-MD5" in messages[22]
    assert "[extra]" in messages[33]
    # The column of an indented key is where the key starts.
    assert next(p for p in problems if p.line == 31).column == 3


def test_config_error_lists_all_problems(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.problems == check_config(path)
    lines = str(error.value).splitlines()
    assert len(lines) == len(error.value.problems) == 17
    assert lines[0] == f"{path}:2:1: server.data_dir must be a string"


def test_syntax_error_position(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlog_level = "info"\ndata_dir = = "x"\n')
    [problem] = check_config(path)
    assert (problem.line, problem.column) == (3, 12)
    assert "(at line" not in problem.message
    unterminated = write(tmp_path, '[server]\nlog_level = "info', "eof.toml")
    [problem] = check_config(unterminated)
    assert problem.line == 2


def test_missing_hosts_and_listeners(tmp_path: Path) -> None:
    messages = [p.message for p in check_config(write(tmp_path, '[server]\nlog_level = "info"\n'))]
    assert any(m.startswith("no host") for m in messages)
    assert any(m.startswith("no listener") for m in messages)


def test_problem_locations_for_quoted_dotted_and_inline_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[[listeners]]
address = "127.0.0.1"
# a comment with key = "value"
[hosts]
"one.example" = { cert = "a.crt" }
'two.example'.bogus = 1

[ c2s ]   # spaces and a comment after the header
"max_depth" = 3
c2s_key = '''
fake = 1
'''
""",
    )
    found = sorted((p.line, p.column, p.message) for p in check_config(path))
    assert [(line, column) for line, column, _ in found] == [(5, 1), (6, 1), (9, 1), (10, 1)]
    assert "cert is given without key" in found[0][2]  # inline table: the host's line
    assert "bogus" in found[1][2]
    assert "max_depth" in found[2][2] and "c2s_key" in found[3][2]


def test_duplicate_hosts_and_listeners(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
[[listeners]]
address = "127.0.0.1"
port = 5222

[[listeners]]
address = "127.0.0.1"
port = 5222

[hosts."example.org"]
[hosts."EXAMPLE.org"]
""",
    )
    problems = check_config(path)
    assert [p.line for p in problems] == [5, 10]
    assert "twice" in problems[0].message and "twice" in problems[1].message


def test_listener_tls_modes(tmp_path: Path) -> None:
    """XEP-0368 direct TLS: `tls = "direct"` on c2s listeners only, port 5223 by default;
    any other value is refused with the line it was written on."""
    path = write(
        tmp_path,
        """\
[[listeners]]
address = "127.0.0.1"

[[listeners]]
address = "127.0.0.1"
tls = "direct"

[hosts."example.org"]
""",
    )
    config = load_config(path)
    assert config.listeners == (
        ListenerConfig("c2s", "127.0.0.1", 5222, "starttls"),
        ListenerConfig("c2s", "127.0.0.1", 5223, "direct"),
    )
    bad = write(
        tmp_path,
        """\
[[listeners]]
address = "127.0.0.1"
tls = "implicit"

[[listeners]]
kind = "s2s"
address = "127.0.0.1"
tls = "direct"

[hosts."example.org"]
""",
        "bad.toml",
    )
    problems = check_config(bad)
    assert [(p.line, p.column) for p in problems] == [(3, 1), (8, 1)]
    assert problems[0].message == 'listeners[0].tls must be one of "starttls", "direct", "none"'
    assert problems[1].message == 'listeners[1].tls = "direct" is for c2s listeners'


def test_http_listeners_and_section(tmp_path: Path) -> None:
    """`kind = "http"`: plain ("none", port 5280) or HTTPS ("direct", port 5281); STARTTLS
    is no HTTP mode, "none" no XMPP one; the [http] keys are checked."""
    path = write(
        tmp_path,
        """\
[[listeners]]
kind = "http"
address = "127.0.0.1"

[[listeners]]
kind = "http"
address = "127.0.0.1"
tls = "direct"

[http]
max_connections = 10
consider_websocket_secure = true
trusted_proxies = ["10.0.0.1", "::1"]
public_url = "https://chat.example.org/"

[hosts."example.org"]
""",
    )
    config = load_config(path)
    assert config.listeners == (
        ListenerConfig("http", "127.0.0.1", 5280, "none"),
        ListenerConfig("http", "127.0.0.1", 5281, "direct"),
    )
    assert config.http == HttpConfig(
        max_connections=10,
        consider_websocket_secure=True,
        trusted_proxies=("10.0.0.1", "::1"),
        public_url="https://chat.example.org",
    )
    bad = write(
        tmp_path,
        """\
[[listeners]]
kind = "http"
address = "127.0.0.1"
tls = "starttls"

[[listeners]]
address = "127.0.0.1"
tls = "none"

[http]
trusted_proxies = ["proxy.example.org"]
public_url = "ftp://x"
max_request_size = 10

[hosts."example.org"]
""",
        "bad.toml",
    )
    problems = check_config(bad)
    assert [p.line for p in problems] == [4, 8, 11, 12, 13]
    assert problems[0].message == (
        'listeners[0].tls must be one of "none", "direct" for http listeners'
    )
    assert problems[1].message == (
        'listeners[1].tls must be one of "starttls", "direct" for c2s listeners'
    )
    assert "'proxy.example.org' is not an IP address" in problems[2].message
    assert "http.public_url must be an http:// or https:// URL" in problems[3].message
    assert problems[4].message == "http.max_request_size must be at least 1024"


def test_unreadable_file(tmp_path: Path) -> None:
    [problem] = check_config(tmp_path / "missing.toml")
    assert problem == Problem(1, 1, "cannot read the configuration: No such file or directory")


# --- certificates ----------------------------------------------------------------------------


def host_config(tmp_path: Path, cert: Path, key: Path) -> Path:
    return write(
        tmp_path,
        f'[[listeners]]\naddress = "127.0.0.1"\n\n[hosts."example.org"]\n'
        f'cert = "{cert}"\nkey = "{key}"\n',
    )


def test_generated_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "out" / "example.org.crt", tmp_path / "out" / "example.org.key"
    generate_self_signed("example.org", cert, key, days=30)
    assert key.stat().st_mode & 0o777 == 0o600
    assert check_certificate(cert, key) is None
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["example.org", "*.example.org"]
    assert isinstance(parsed.public_key(), ec.EllipticCurvePublicKey)
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert datetime.timedelta(days=29) < lifetime < datetime.timedelta(days=31)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    assert check_config(host_config(tmp_path, cert, key)) == []


def test_idn_certificate_uses_a_labels(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    generate_self_signed("b\u00fccher.example", cert, key)
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName)[0] == "xn--bcher-kva.example"


def test_ensure_certificate_creates_once(tmp_path: Path) -> None:
    cert, key = ensure_certificate("example.org", tmp_path / "certs")
    assert (cert, key) == (tmp_path / "certs/example.org.crt", tmp_path / "certs/example.org.key")
    first = cert.read_bytes()
    assert ensure_certificate("example.org", tmp_path / "certs") == (cert, key)
    assert cert.read_bytes() == first  # not regenerated
    key.unlink()
    ensure_certificate("example.org", tmp_path / "certs")
    assert cert.read_bytes() != first and check_certificate(cert, key) is None


def test_certificate_problems(tmp_path: Path) -> None:
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    other_cert, other_key = tmp_path / "b.crt", tmp_path / "b.key"
    generate_self_signed("example.org", cert, key)
    generate_self_signed("example.org", other_cert, other_key)
    assert "does not match" in (check_certificate(cert, other_key) or "")
    assert "cannot read" in (check_certificate(tmp_path / "none.crt", key) or "")
    assert "not a PEM certificate" in (check_certificate(key, key) or "")
    assert "private key" in (check_certificate(cert, cert) or "")

    problems = check_config(host_config(tmp_path, cert, other_key))
    assert [(p.line, p.column) for p in problems] == [(5, 1)]  # the cert line
    assert "does not match" in problems[0].message
    # load_config reads the files only when asked to (as `serve` does).
    assert load_config(host_config(tmp_path, cert, other_key)).hosts["example.org"].key == other_key
    with pytest.raises(ConfigError, match="does not match"):
        load_config(host_config(tmp_path, cert, other_key), check_files=True)


def test_expired_certificate(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.org")])
    now = datetime.datetime.now(datetime.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "old.crt", tmp_path / "old.key"
    cert_path.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert "expired" in (check_certificate(cert_path, key_path) or "")


def test_server_admins_are_bare_jids_of_served_hosts(tmp_path: Path) -> None:
    # fastxmpp/modules/adhoc.py (XEP-0133): who may run the administration commands.
    base = (
        '[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = 5222\n\n[hosts."example.org"]\n'
    )
    good = write(tmp_path, '[server]\nadmins = ["Alice@Example.org"]\n' + base)
    assert load_config(good).admins == ("alice@example.org",)
    assert load_config(write(tmp_path, base, "none.toml")).admins == ()
    for admins, complaint in (
        ('["alice@example.org/phone"]', "bare JIDs"),
        ('["example.org"]', "bare JIDs"),
        ('["alice@elsewhere.example"]', "not an account of a host served here"),
        ('"alice@example.org"', "array of bare JIDs"),
    ):
        path = write(tmp_path, f"[server]\nadmins = {admins}\n" + base, "bad.toml")
        problems = check_config(path)
        assert len(problems) == 1 and complaint in problems[0].message, problems
        assert problems[0].line == 2
