"""Federation with Prosody: `.venv/bin/python -P tests/interop/s2s_prosody.py` by hand, or
tests/test_interop_prosody_s2s.py, which runs it in a network namespace of its own.

Starts Prosody (the Debian package, `apt-get install prosody`) and fastxmpp on loopback three
times: with a CA both trust (SASL EXTERNAL, XEP-0178, both ways), the same with Prosody's
mod_s2s_bidi (XEP-0288: one link carries both directions), and without a CA (XEP-0220
dialback); checks messages, pings, a subscription handshake to 'both' and presence in both
directions; then a Prosody user in a room of fastxmpp's MUC service (XEP-0045 over s2s:
entering, groupchat both ways, a nickname change, leaving).
Prosody finds fastxmpp through DNS, so fastxmpp serves `localhost` with its s2s listener on
port 5269, which must be free; fastxmpp reaches Prosody's `p.test` by a static route.
It needs Prosody and that port (a network namespace has it free). Exit code 0: everything
passed.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trustme
from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from xmpp_raw import CLIENT, SASL, RawClient

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "interop-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def login(port: int, host: str, user: str, ca_file: str) -> RawClient:
    c = RawClient(port)
    c.open_stream(host)
    c.starttls(ca_file, host)
    assert c.sasl_scram(user, PASSWORD, "SCRAM-SHA-1").tag == f"{{{SASL}}}success"
    c.open_stream(host)
    c.bind("r")
    # An interested resource (RFC 6121 §2.1.6): Prosody sends subscription stanzas only to
    # resources that fetched the roster.
    c.send("<iq type='get' id='r0'><query xmlns='jabber:iq:roster'/></iq>")
    c.send("<presence/>")
    return c


def wait_for(c: RawClient, what: str, match: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            el = c.next(timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if match(el):
            return el
    raise AssertionError(f"never got {what}")


def presence(frm: str, ptype: str | None = None) -> Any:
    return lambda el: (
        el.tag == f"{{{CLIENT}}}presence" and el.get("from") == frm and el.get("type") == ptype
    )


def room_with_remote_user(alice: RawClient, pat: RawClient, peer: str = "prosody") -> None:
    """XEP-0045 across the link: alice creates an instant room on fastxmpp's MUC service,
    pat (on the other server, `peer`) enters it over s2s, both talk, pat changes nick and
    leaves."""
    room = "lounge@conference.localhost"
    muc = "http://jabber.org/protocol/muc"
    user = "http://jabber.org/protocol/muc#user"
    alice.send(f"<presence to='{room}/alice'><x xmlns='{muc}'/></presence>")
    wait_for(alice, "alice in the room", lambda el: el.get("from") == f"{room}/alice")
    alice.send(
        f"<iq type='set' id='inst' to='{room}'><query xmlns='{muc}#owner'>"
        "<x xmlns='jabber:x:data' type='submit'/></query></iq>"
    )
    assert (
        wait_for(alice, "instant room", lambda el: el.get("id") == "inst").get("type") == "result"
    )
    pat.send(f"<presence to='{room}/pat'><x xmlns='{muc}'/></presence>")
    own = wait_for(pat, "pat's own presence", lambda el: el.get("from") == f"{room}/pat")
    codes = {s.get("code") for s in own.iter(f"{{{user}}}status")}
    assert "110" in codes, etree.tostring(own)
    wait_for(alice, "pat entering", presence(f"{room}/pat"))
    pat.send(f"<message to='{room}' type='groupchat'><body>hello from {peer}</body></message>")

    def said(el: Any) -> bool:  # (the room's subject comes first, without a body)
        return el.get("type") == "groupchat" and el.find(f"{{{CLIENT}}}body") is not None

    for c, name in ((alice, "alice"), (pat, "pat")):
        msg = wait_for(c, f"the groupchat at {name}", said)
        assert msg.get("from") == f"{room}/pat", msg.get("from")
        assert msg.findtext(f"{{{CLIENT}}}body") == f"hello from {peer}"
    alice.send(f"<message to='{room}' type='groupchat'><body>hello from fastxmpp</body></message>")
    msg = wait_for(pat, "alice's groupchat", said)
    assert msg.get("from") == f"{room}/alice"
    pat.send(f"<presence to='{room}/patrick'/>")
    wait_for(alice, "the nick change", lambda el: el.get("from") == f"{room}/patrick")
    pat.send(f"<presence to='{room}/patrick' type='unavailable'/>")
    wait_for(alice, "pat leaving", presence(f"{room}/patrick", "unavailable"))
    alice.send(f"<presence to='{room}/alice' type='unavailable'/>")


def exchange(fx_port: int, p_port: int, ca_file: str, domain: str = "p.test") -> None:
    """Messages, pings, a subscription to 'both' and presence between alice@localhost on
    fastxmpp and pat@`domain` on the other server, both ways."""
    alice = login(fx_port, "localhost", "alice", ca_file)
    pat = login(p_port, domain, "pat", ca_file)
    alice.send(f"<message to='pat@{domain}' type='chat'><body>from fastxmpp</body></message>")
    msg = wait_for(pat, "alice's message", lambda el: el.tag == f"{{{CLIENT}}}message")
    assert msg.get("from") == "alice@localhost/r"
    pat.send("<message to='alice@localhost/r' type='chat'><body>from the peer</body></message>")
    msg = wait_for(alice, "pat's message", lambda el: el.tag == f"{{{CLIENT}}}message")
    assert msg.get("from") == f"pat@{domain}/r"
    alice.send(f"<iq type='get' id='p1' to='{domain}'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert wait_for(alice, "ping 1", lambda el: el.get("id") == "p1").get("type") == "result"
    pat.send("<iq type='get' id='p2' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert wait_for(pat, "ping 2", lambda el: el.get("id") == "p2").get("type") == "result"
    for x, x_jid, y, y_jid in ((alice, "alice@localhost", pat, f"pat@{domain}"),
                               (pat, f"pat@{domain}", alice, "alice@localhost")):  # fmt: skip
        x.send(f"<presence type='subscribe' to='{y_jid}'/>")
        wait_for(y, "subscribe", presence(x_jid, "subscribe"))
        y.send(f"<presence type='subscribed' to='{x_jid}'/>")
        wait_for(x, "subscribed", presence(y_jid, "subscribed"))
    for c, contact in ((alice, f"pat@{domain}"), (pat, "alice@localhost")):
        c.send("<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>")
        reply = wait_for(c, "roster", lambda el: el.get("id") == "r")
        items = {i.get("jid"): i.get("subscription") for i in reply.iter("{jabber:iq:roster}item")}
        assert items == {contact: "both"}, items
    pat.send("<presence><show>away</show></presence>")
    wait_for(alice, "pat away", presence(f"pat@{domain}/r"))
    alice.send("<presence type='unavailable'/>")
    wait_for(pat, "alice unavailable", presence("alice@localhost/r", "unavailable"))
    alice.close()
    pat.close()


def run(root: Path, ca: trustme.CA, trusted: bool, bidi: bool) -> None:
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    for host in ("localhost", "p.test"):
        cert = ca.issue_cert(host)
        cert.cert_chain_pems[0].write_to_path(str(root / f"{host}.crt"))
        cert.private_key_pem.write_to_path(str(root / f"{host}.key"))
    fx_port, p_c2s, p_s2s = free_port(), free_port(), free_port()
    (root / "fx.toml").write_text(
        f'[server]\ndata_dir = "{root}/fx"\nlog_level = "debug"\n\n'
        f'[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = {fx_port}\n\n'
        '[[listeners]]\nkind = "s2s"\naddress = "127.0.0.1"\nport = 5269\n\n'
        f'[hosts.localhost]\ncert = "{root}/localhost.crt"\nkey = "{root}/localhost.key"\n\n'
        f'[s2s]\nenabled = true\nroutes = {{ "p.test" = "127.0.0.1:{p_s2s}" }}\n'
        + (f'ca_file = "{ca_file}"\n' if trusted else "")
    )
    cafile = f'cafile = "{ca_file}"' if trusted else ""
    (root / "prosody.cfg.lua").write_text(f"""
run_as_root = true
daemonize = false
pidfile = "{root}/prosody.pid"
data_path = "{root}/pdata"
log = {{ debug = "{root}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {p_c2s} }}
s2s_ports = {{ {p_s2s} }}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "roster", "saslauth", "tls", "dialback", "disco", "ping", "presence",
                    "s2s_auth_certs", "posix"{', "s2s_bidi"' if bidi else ""} }}
authentication = "internal_hashed"
s2s_require_encryption = true
s2s_secure_auth = false
ssl = {{ {cafile} }}
VirtualHost "p.test"
  ssl = {{ certificate = "{root}/p.test.crt", key = "{root}/p.test.key", {cafile} }}
""")
    (root / "pdata").mkdir()
    cli = [sys.executable, "-P", "-m", "fastxmpp.cli"]
    fx_cfg = ["--config", str(root / "fx.toml")]
    subprocess.run([*cli, "adduser", "alice@localhost", "--password-stdin", *fx_cfg],
                   input=PASSWORD, text=True, check=True, cwd=REPO)  # fmt: skip
    prosody_cfg = ["--config", str(root / "prosody.cfg.lua")]
    subprocess.run(["prosodyctl", *prosody_cfg, "register", "pat", "p.test", PASSWORD],
                   check=True, capture_output=True)  # fmt: skip
    fx_log = (root / "fx.log").open("w")
    procs = [
        subprocess.Popen(["prosody", *prosody_cfg], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([*cli, "serve", *fx_cfg], stdout=fx_log, stderr=subprocess.STDOUT,
                         cwd=REPO),
    ]  # fmt: skip
    try:
        wait_port(p_c2s)
        wait_port(fx_port)
        wait_port(5269)
        exchange(fx_port, p_c2s, str(ca_file))
        how = "SASL EXTERNAL" if trusted else "dialback"
        text = (root / "fx.log").read_text()
        if bidi:
            # Prosody's stanzas came back over our link: it opened none.
            assert f"localhost -> p.test: ready ({how}, bidirectional)" in text, text
            assert "p.test authenticated" not in text, text
            how += " and XEP-0288"
        else:
            assert f"p.test authenticated ({how})" in text, text
            assert f"localhost -> p.test: ready ({how})" in text, text
        # Then a room of fastxmpp's MUC service with a Prosody user in it: the links of
        # another domain pair (p.test <-> conference.localhost), bidirectional if asked.
        alice = login(fx_port, "localhost", "alice", str(ca_file))
        pat = login(p_c2s, "p.test", "pat", str(ca_file))
        room_with_remote_user(alice, pat)
        alice.close()
        pat.close()
        if bidi:
            text = (root / "fx.log").read_text()
            assert "conference.localhost -> p.test: over the peer's bidirectional link" in text
        print(f"Prosody interop with {how}: OK")
    except BaseException:
        print((root / "fx.log").read_text()[-6000:], file=sys.stderr)
        print((root / "prosody.log").read_text()[-20000:], file=sys.stderr)
        raise
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def main() -> int:
    ca = trustme.CA()
    for trusted, bidi in ((True, False), (True, True), (False, False)):
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), ca, trusted, bidi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
