"""A Gajim 1.7 profile made without its account wizard: the settings database
(settings.sqlite: a table of JSON documents, the schema of Gajim's common/settings.py,
user_version 5, so Gajim migrates nothing) with one account that connects to a test server
by custom host and port, STARTTLS, the password kept in the database (no keyring), Gajim's
D-Bus remote control on (gajim-remote's interface), subscription requests approved without a
dialog (the account's autoauth) and the OMEMO plugin active."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

SETTINGS_VERSION = 5  # Gajim 1.7's CURRENT_USER_VERSION: no migration runs on start

APP_SETTINGS: dict[str, Any] = {
    "use_keyring": False,  # the password from the database (its ConfigPasswordStorage)
    "remote_control": True,  # org.gajim.dbus.RemoteInterface on the session bus
    "check_for_update": False,
    "show_help_start_chat": False,
    "autoaway": False,  # no idle presence changes on a loaded machine
    "autoxa": False,
    "confirm_on_window_delete": False,
    "plugins_update_check": False,
    "plugins_auto_update": False,
}


def account_settings(user: str, domain: str, password: str, port: int) -> dict[str, Any]:
    return {
        "account": {
            "active": True,
            "autoauth": True,  # subscription requests approved without a dialog
            "autoconnect": True,
            "name": user,
            "hostname": domain,
            "password": password,
            "savepass": True,
            "resource": "gajim",
            "use_custom_host": True,
            "custom_host": "127.0.0.1",
            "custom_port": port,
            "custom_type": "START TLS",
            "sync_with_global_status": True,
            "last_status": "online",
        },
        "contact": {},
        "group_chat": {},
    }


def write_profile(
    config_dir: Path, account: str, user: str, domain: str, password: str, port: int
) -> Path:
    """settings.sqlite in `config_dir` (Gajim's $XDG_CONFIG_HOME/gajim) with `account`."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "settings.sqlite"
    documents = {
        "app": APP_SETTINGS,
        "soundevents": {},
        "status_presets": {},
        "proxies": {},
        "plugins": {"omemo": {"active": True}},
        "workspaces": {str(uuid.uuid4()): {}},
    }
    db = sqlite3.connect(path)
    try:
        db.executescript(
            "CREATE TABLE settings (name TEXT UNIQUE, settings TEXT);"
            "CREATE TABLE account_settings (account TEXT UNIQUE, settings TEXT);"
            f"PRAGMA user_version={SETTINGS_VERSION};"
        )
        db.executemany(
            "INSERT INTO settings(name, settings) VALUES (?, ?)",
            [(name, json.dumps(value)) for name, value in documents.items()],
        )
        db.execute(
            "INSERT INTO account_settings(account, settings) VALUES (?, ?)",
            (account, json.dumps(account_settings(user, domain, password, port))),
        )
        db.commit()
    finally:
        db.close()
    return path
