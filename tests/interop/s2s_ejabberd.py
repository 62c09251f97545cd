"""Federation with ejabberd: `.venv/bin/python -P tests/interop/s2s_ejabberd.py` (as root, in
a network namespace: tests/test_interop_ejabberd_s2s.py runs it so).

Starts ejabberd (Debian's 23.01, `apt-get install ejabberd`, run as its own user) serving
`e.test`, and fastxmpp serving `localhost`, on loopback, twice: with a CA both trust (SASL
EXTERNAL, XEP-0178) and without one (XEP-0220 dialback, ejabberd's mod_s2s_dialback); checks
messages, pings, a subscription handshake to 'both' and presence in both directions, then
an ejabberd user in a room of fastxmpp's MUC service (the scenarios of s2s_prosody.py).
ejabberd finds fastxmpp through DNS, so fastxmpp's s2s listener takes port 5269; fastxmpp
reaches `e.test` by a static route. Exit code 0: everything passed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s2s_prosody import PASSWORD, REPO, exchange, free_port, login, room_with_remote_user, wait_port

CONFIG = """
hosts:
  - e.test
loglevel: info
certfiles:
  - "{pem}"
{ca}
s2s_use_starttls: required
s2s_access: all
listen:
  - port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls_required: true
  - port: {s2s}
    ip: "127.0.0.1"
    module: ejabberd_s2s_in
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_ping: {{}}
  mod_s2s_dialback: {{}}
"""


def run(root: Path, ca: trustme.CA, trusted: bool) -> None:
    user = pwd.getpwnam("ejabberd")
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # Erlang's certificate code fails on trustme's default validity (until the year 3000).
    now = datetime.datetime.now(datetime.UTC)
    for host in ("localhost", "e.test"):
        cert = ca.issue_cert(
            host,
            not_before=now - datetime.timedelta(days=1),
            not_after=now + datetime.timedelta(days=30),
        )
        cert.cert_chain_pems[0].write_to_path(str(root / f"{host}.crt"))
        cert.private_key_pem.write_to_path(str(root / f"{host}.key"))
    pem = root / "e.test.pem"
    pem.write_bytes((root / "e.test.crt").read_bytes() + (root / "e.test.key").read_bytes())
    fx_port, e_c2s, e_s2s = free_port(), free_port(), free_port()
    (root / "fx.toml").write_text(
        f'[server]\ndata_dir = "{root}/fx"\nlog_level = "debug"\n\n'
        f'[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = {fx_port}\n\n'
        '[[listeners]]\nkind = "s2s"\naddress = "127.0.0.1"\nport = 5269\n\n'
        f'[hosts.localhost]\ncert = "{root}/localhost.crt"\nkey = "{root}/localhost.key"\n\n'
        f'[s2s]\nenabled = true\nroutes = {{ "e.test" = "127.0.0.1:{e_s2s}" }}\n'
        + (f'ca_file = "{ca_file}"\n' if trusted else "")
    )
    config = root / "ejabberd.yml"
    config.write_text(
        CONFIG.format(pem=pem, c2s=e_c2s, s2s=e_s2s, ca=f'ca_file: "{ca_file}"' if trusted else "")
    )
    (root / "ejabberdctl.cfg").write_text(f'EJABBERD_PID_PATH="{root}/spool/ejabberd.pid"\n')
    for sub in ("spool", "logs"):
        (root / sub).mkdir()
    for path in [root, *root.iterdir()]:
        os.chown(path, user.pw_uid, user.pw_gid)
    base = [
        *("ejabberdctl", "--ctl-config", str(root / "ejabberdctl.cfg"), "--config", str(config)),
        *("--spool", str(root / "spool"), "--logs", str(root / "logs")),
        *("--node", f"s2s{os.getpid()}{'t' if trusted else 'd'}@localhost"),
    ]
    as_user = {
        "user": user.pw_uid,
        "group": user.pw_gid,
        "extra_groups": [],
        "env": {**os.environ, "HOME": user.pw_dir},
    }
    cli = [sys.executable, "-P", "-m", "fastxmpp.cli"]
    fx_cfg = ["--config", str(root / "fx.toml")]
    subprocess.run([*cli, "adduser", "alice@localhost", "--password-stdin", *fx_cfg],
                   input=PASSWORD, text=True, check=True, cwd=REPO)  # fmt: skip
    fx_log = (root / "fx.log").open("w")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    ejabberd = subprocess.Popen([*base, "foreground"], start_new_session=True, **quiet, **as_user)
    fastxmpp = subprocess.Popen([*cli, "serve", *fx_cfg], stdout=fx_log,
                                stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    try:
        wait_port(e_c2s)
        wait_port(fx_port)
        subprocess.run([*base, "register", "pat", "e.test", PASSWORD], check=True,
                       capture_output=True, timeout=60, **as_user)  # fmt: skip
        exchange(fx_port, e_c2s, str(ca_file), domain="e.test")
        how = "SASL EXTERNAL" if trusted else "dialback"
        text = (root / "fx.log").read_text()
        assert f"e.test authenticated ({how})" in text, text[-6000:]
        assert f"localhost -> e.test: ready ({how})" in text, text[-6000:]
        alice = login(fx_port, "localhost", "alice", str(ca_file))
        pat = login(e_c2s, "e.test", "pat", str(ca_file))
        room_with_remote_user(alice, pat, "ejabberd")
        alice.close()
        pat.close()
        print(f"ejabberd interop with {how}: OK")
    except BaseException:
        print((root / "fx.log").read_text()[-6000:], file=sys.stderr)
        with contextlib.suppress(OSError):
            print((root / "logs" / "ejabberd.log").read_text()[-20000:], file=sys.stderr)
        raise
    finally:
        fastxmpp.terminate()
        fastxmpp.wait(10)
        os.killpg(ejabberd.pid, signal.SIGTERM)
        try:
            ejabberd.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(ejabberd.pid, signal.SIGKILL)
            ejabberd.wait(5)


def main() -> int:
    ca = trustme.CA()
    try:
        for trusted in (True, False):
            # ejabberd runs as its own user: a directory it may enter.
            root = Path(tempfile.mkdtemp(prefix="fastxmpp-s2s-ejabberd-"))
            try:
                run(root, ca, trusted)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        # The Erlang port mapper ejabberd started would outlive this namespace's last user.
        subprocess.run(["epmd", "-kill"], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
