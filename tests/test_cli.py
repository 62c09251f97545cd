"""The `fastxmpp` command line, run as a real subprocess against a temporary config and data
directory."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import FASTXMPP
from cryptography import x509

from fastxmpp import __version__
from fastxmpp.certs import check_certificate
from fastxmpp.storage.accounts import AccountStore
from fastxmpp.storage.lmdb_store import Storage

REPO = Path(__file__).resolve().parent.parent


def fastxmpp(
    *args: str, stdin: str | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FASTXMPP, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fastxmpp.toml"
    path.write_text(
        """\
[server]
data_dir = "data"

[[listeners]]
address = "127.0.0.1"
port = 0

[hosts."example.org"]
[hosts.localhost]
"""
    )
    return path


def users(config: Path, *domain: str) -> list[str]:
    result = fastxmpp("listusers", *domain, "--config", str(config))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def password_ok(config: Path, domain: str, local: str, password: str) -> bool:
    storage = Storage(config.parent / "data", map_size=1 << 30)
    try:
        return AccountStore(storage).check_password(domain, local, password)
    finally:
        storage.close()


def test_version() -> None:
    result = fastxmpp("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fastxmpp {__version__}" == "fastxmpp 0.1.0"


def test_no_command_is_a_usage_error() -> None:
    result = fastxmpp()
    assert result.returncode == 2 and "usage:" in result.stderr


def test_account_lifecycle(config: Path) -> None:
    c = ("--config", str(config))
    added = fastxmpp("adduser", "Alice@Example.org", "--password-stdin", *c, stdin="s3cret pw\n")
    assert added.returncode == 0, added.stderr
    assert "alice@example.org" in added.stdout
    # Only the trailing newline is stripped: the space inside and at the end stay.
    assert (
        fastxmpp("adduser", "bob@example.org", "--password-stdin", *c, stdin="pw \n").returncode
        == 0
    )
    assert fastxmpp("adduser", "carol@localhost", "--password-stdin", *c, stdin="x").returncode == 0
    assert users(config) == ["alice@example.org", "bob@example.org", "carol@localhost"]
    assert users(config, "localhost") == ["carol@localhost"]
    assert password_ok(config, "example.org", "alice", "s3cret pw")
    assert password_ok(config, "example.org", "bob", "pw ")
    assert not password_ok(config, "example.org", "bob", "pw")

    changed = fastxmpp("passwd", "alice@example.org", "--password-stdin", *c, stdin="new pw\n")
    assert changed.returncode == 0, changed.stderr
    assert password_ok(config, "example.org", "alice", "new pw")
    assert not password_ok(config, "example.org", "alice", "s3cret pw")

    deleted = fastxmpp("deluser", "alice@example.org", *c)
    assert deleted.returncode == 0, deleted.stderr
    assert users(config) == ["bob@example.org", "carol@localhost"]
    # The data directory is private to its owner.
    assert (config.parent / "data").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (("adduser", "alice@example.net", "--password-stdin"), "pw", "not a configured host"),
        (("adduser", "alice@example.org/res", "--password-stdin"), "pw", "without a /resource"),
        (("adduser", "example.org", "--password-stdin"), "pw", "user part"),
        (("adduser", "a b@example.org", "--password-stdin"), "pw", "localpart"),
        (("adduser", "alice@example.org", "--password-stdin"), "\n", "must not be empty"),
        (("adduser", "alice@example.org", "--password-stdin"), "", "must not be empty"),
        (("adduser", "taken@example.org", "--password-stdin"), "pw", "already exists"),
        (("passwd", "nobody@example.org", "--password-stdin"), "pw", "no account"),
        (("deluser", "nobody@example.org"), None, "no account"),
        (("deluser", "taken@example.net"), None, "not a configured host"),
        (("listusers", "bad domain"), None, "invalid domainpart"),
    ],
)
def test_account_command_errors(
    config: Path, args: tuple[str, ...], stdin: str | None, expected: str
) -> None:
    setup = fastxmpp(
        "adduser", "taken@example.org", "--password-stdin", "--config", str(config), stdin="pw"
    )
    assert setup.returncode == 0, setup.stderr
    result = fastxmpp(*args, "--config", str(config), stdin=stdin)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert users(config) == ["taken@example.org"]  # nothing else changed
    assert password_ok(config, "example.org", "taken", "pw")


def test_adduser_with_prompt_needs_matching_passwords(config: Path) -> None:
    # Without a terminal getpass reads the two answers from stdin.
    mismatch = fastxmpp("adduser", "alice@example.org", "--config", str(config), stdin="a\nb\n")
    assert mismatch.returncode == 1 and "do not match" in mismatch.stderr
    match = fastxmpp("adduser", "alice@example.org", "--config", str(config), stdin="a\na\n")
    assert match.returncode == 0, match.stderr
    assert password_ok(config, "example.org", "alice", "a")


def test_default_config_uses_localhost_and_var(tmp_path: Path) -> None:
    result = fastxmpp("adduser", "alice@localhost", "--password-stdin", stdin="pw", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "db" / "data.mdb").is_file()
    refused = fastxmpp("adduser", "alice@example.org", "--password-stdin", stdin="pw", cwd=tmp_path)
    assert refused.returncode == 1 and "not a configured host" in refused.stderr


def test_check_config(config: Path, tmp_path: Path) -> None:
    ok = fastxmpp("check-config", "--config", str(config))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "configuration OK: 2 hosts, 1 listener"
    example = fastxmpp("check-config", "--config", str(REPO / "config.example.toml"))
    assert example.returncode == 0, example.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlog_level = "loud"\n\n[c2s]\nresource_conflict = "x"\n')
    result = fastxmpp("check-config", "--config", str(bad))
    assert result.returncode == 1
    # One line per problem, in line order.
    lines = [line.split(" ", 1)[0] for line in result.stderr.splitlines()]
    assert lines == [f"{bad}:1:1:", f"{bad}:1:1:", f"{bad}:2:1:", f"{bad}:5:1:"]
    for expected in ("no host", "no listener", "server.log_level", "c2s.resource_conflict"):
        assert expected in result.stderr


def test_check_config_refuses_a_bad_listener_tls(tmp_path: Path) -> None:
    bad = tmp_path / "tls.toml"
    bad.write_text(
        '[[listeners]]\naddress = "127.0.0.1"\nport = 5223\ntls = "ssl"\n\n[hosts.localhost]\n'
    )
    result = fastxmpp("check-config", "--config", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'{bad}:4:1: listeners[0].tls must be one of "starttls", "direct", "none"'
    )


def test_commands_refuse_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    for args in (("listusers",), ("serve",), ("deluser", "a@localhost")):
        result = fastxmpp(*args, "--config", str(bad))
        assert result.returncode == 1
        assert result.stderr.startswith(f"{bad}:1:")
        assert "Traceback" not in result.stderr


def test_serve_refuses_a_mismatching_certificate(tmp_path: Path) -> None:
    assert fastxmpp("gencert", "a.example", "--out", str(tmp_path)).returncode == 0
    assert fastxmpp("gencert", "b.example", "--out", str(tmp_path)).returncode == 0
    config = tmp_path / "fastxmpp.toml"
    config.write_text(
        '[[listeners]]\naddress = "127.0.0.1"\nport = 0\n\n[hosts."a.example"]\n'
        'cert = "a.example.crt"\nkey = "b.example.key"\n'
    )
    result = fastxmpp("serve", "--config", str(config))
    assert result.returncode == 1
    assert f"{config}:6:1: host a.example: key" in result.stderr
    assert "does not match" in result.stderr


def test_gencert(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "tls"
    result = fastxmpp("gencert", "Example.ORG", "--out", str(out), "--config", str(config))
    assert result.returncode == 0, result.stderr
    cert, key = out / "example.org.crt", out / "example.org.key"
    assert check_certificate(cert, key) is None
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "example.org" in names.get_values_for_type(x509.DNSName)
    assert key.stat().st_mode & 0o777 == 0o600

    # Existing files are kept unless --force.
    before = cert.read_bytes()
    again = fastxmpp("gencert", "example.org", "--out", str(out))
    assert again.returncode == 1 and "already exist" in again.stderr
    assert cert.read_bytes() == before
    forced = fastxmpp("gencert", "example.org", "--out", str(out), "--force")
    assert forced.returncode == 0 and cert.read_bytes() != before

    # Without --out: data_dir/certs of the configuration.
    default = fastxmpp("gencert", "localhost", "--config", str(config))
    assert default.returncode == 0, default.stderr
    data_certs = config.parent / "data" / "certs"
    assert check_certificate(data_certs / "localhost.crt", data_certs / "localhost.key") is None

    invalid = fastxmpp("gencert", "not a domain", "--out", str(out))
    assert invalid.returncode == 1 and "Traceback" not in invalid.stderr
