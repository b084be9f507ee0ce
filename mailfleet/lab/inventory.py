"""Writes the lab's nodes into a mailfleet.toml as [[hosts]], keeping the user's comments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from mailfleet.config import load, read_text, save
from mailfleet.errors import ConfigError
from mailfleet.lab import network
from mailfleet.lab.acme import LabAcme
from mailfleet.lab.dns import LabDns
from mailfleet.lab.lab import Lab
from mailfleet.lab.state import LabState
from mailfleet.templating import render_init

LAB_DOMAIN = "example.internal"


def host_entries(lab: Lab, state: LabState) -> list[dict]:
    return [
        {
            "name": node.name,
            "address": "127.0.0.1",
            "ipv4": node.address,
            "ssh_port": node.ssh_port,
            "ssh_user": "root",
            "ssh_key": str(lab.paths.ssh_key),
            "ssh_known_hosts": str(lab.paths.known_hosts),
            "roles": ["mail", "db", "web"],
            "lab": lab.paths.id,
        }
        for node in state.nodes
    ]


def ssh_user(path: Path, lab_id: str, node: str) -> str:
    """Who logs in to a lab node: the config's ssh_user for it (after deploy, the admin user),
    else root (no config yet, or one that does not load)."""
    try:
        hosts = load(path).hosts if path.exists() else []
    except ConfigError:
        hosts = []
    return next((h.ssh_user for h in hosts if h.name == node and h.lab == lab_id), "root")


def write_hosts(path: Path, lab_id: str, entries: list[dict]) -> list[str]:
    """Replace this lab's [[hosts]] in `path` by `entries`; create the file if it is missing.

    Into an existing file only the [[hosts]] go: a lab host needs nothing else there (deploy
    keeps the lab's gateway out of fail2ban's bans, `check` says when the lab has no DNS), so
    removing them again gives back the file as it was. Returns the names of the lab's hosts
    that were there before."""
    before: list[str] = []
    if not path.exists():
        # this machine is the lab's operator: its failed test logins must not ban it;
        # the lab has no DNS until `lab dns` gives it one
        text = render_init(LAB_DOMAIN, f"mail.{LAB_DOMAIN}", entries,
                           fail2ban_ignore=[network.GATEWAY], dns_check=False)
    else:
        doc = tomlkit.parse(read_text(path))
        hosts = doc.get("hosts")
        kept = [h for h in (hosts or []) if h.get("lab") != lab_id]
        before = [h.get("name") for h in (hosts or []) if h.get("lab") == lab_id]
        table_array = tomlkit.aot()
        for host in [*kept, *entries]:
            table_array.append(host)
        if "hosts" in doc:
            del doc["hosts"]
        if kept or entries:
            doc["hosts"] = table_array
        # tomlkit leaves a blank line where the [[hosts]] were: `init` ends with one newline
        text = tomlkit.dumps(doc).rstrip("\n") + "\n"
    save(path, text)
    return before


def read_lab_hosts(path: Path) -> dict[str, list[dict]]:
    """The [[hosts]] entries `lab up` wrote into `path`, by lab name (none if unreadable)."""
    try:
        doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, tomlkit.exceptions.TOMLKitError):
        return {}
    found: dict[str, list[dict]] = {}
    for host in doc.get("hosts") or []:
        if isinstance(host, dict) and host.get("lab"):
            found.setdefault(str(host["lab"]), []).append(host.unwrap())
    return found


def remove_hosts(path: Path, lab_id: str) -> list[str]:
    """Take this lab's [[hosts]] out of `path`; the names that were there."""
    if path.exists():
        return write_hosts(path, lab_id, [])
    return []


def _table(path: Path, name: str) -> tuple[tomlkit.TOMLDocument, Any]:
    """The config at `path` and its table `name` (added if missing), comments kept."""
    doc = tomlkit.parse(read_text(path))
    if doc.get(name) is None:
        doc[name] = tomlkit.table()
    return doc, doc[name]


def write_dns(path: Path, dns: LabDns) -> None:
    """Point [dns] at the lab's DNS server: checks ask it, publishing updates its zones."""
    doc, table = _table(path, "dns")
    forward = f"127.0.0.1:{dns.port}"
    table["check"] = True
    table["resolvers"] = [forward]
    table["tcp"] = True  # the loopback forward carries TCP only
    zones = tomlkit.aot()
    for zone in dns.zones:
        # this machine reaches BIND through a forward, the lab hosts (certbot's DNS-01
        # challenges) at its lab address
        zones.append({"zone": zone, "server": "127.0.0.1", "port": dns.port,
                      "tsig_key_file": str(dns.key_file), "host_server": dns.address,
                      "host_port": 53})
    table["zones"] = zones
    save(path, tomlkit.dumps(doc))


def write_acme_keys(path: Path, keys: dict[str, Path]) -> None:
    """Give each host its own DNS-01 key ([acme] tsig_keys), the zone key staying here."""
    if not keys:
        return
    doc, table = _table(path, "acme")
    known = dict(table.get("tsig_keys") or {})
    known.update({host: str(key) for host, key in keys.items()})
    table["tsig_keys"] = known
    save(path, tomlkit.dumps(doc))


def write_acme(path: Path, acme: LabAcme) -> None:
    """Point [acme] at the lab's Pebble, trusting its listener's certificate."""
    doc, table = _table(path, "acme")
    table["enabled"] = True
    table["directory"] = acme.directory
    table["directory_ca_file"] = str(acme.listener_ca)
    save(path, tomlkit.dumps(doc))
