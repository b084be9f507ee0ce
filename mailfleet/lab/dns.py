"""The lab's DNS: BIND 9 on one node, authoritative for the lab's zones, accepting RFC 2136
updates signed with a TSIG key, and the resolver of every lab node.

The zone key (KEY_NAME) may change anything in the zones and stays on this machine. Each
host that proves its names by ACME DNS-01 gets a key of its own (acme-HOST) that BIND lets
change only the TXT records `_acme-challenge.NAME` of that host's certificate names.

With `recursion no` BIND still answers its own zones to the nodes' stub resolvers, and
answers nothing else: the lab has no Internet to recurse into.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mailfleet.errors import LabError
from mailfleet.lab import network
from mailfleet.lab.lab import Lab
from mailfleet.templating import render

KEY_NAME = "mailfleet-lab"
KEY_FILE = "/etc/bind/mailfleet-lab.key"
NAMESERVER = "ns.lab.internal"  # out of every zone: no glue needed
REVERSE_ZONE = ipaddress.ip_network(network.SUBNET).network_address.reverse_pointer.split(".", 1)[1]


@dataclass(frozen=True)
class LabDns:
    node: str
    address: str     # inside the lab
    port: int        # on this machine's loopback, forwarded to the node's TCP 53
    zones: list[str]
    key_file: Path   # a copy of the TSIG key, for [[dns.zones]]
    acme_keys: dict[str, Path] = field(default_factory=dict)  # host -> its ACME key's copy


def acme_key_name(host: str) -> str:
    return f"acme-{host}"


def acme_grants(zones: list[str], acme: dict[str, list[str]]) -> dict[str, list[tuple[str, str]]]:
    """Per zone, the (key, owner name) pairs BIND's update-policy allows: each host's key may
    change the TXT records `_acme-challenge.NAME.` of its names in that zone, nothing else."""
    grants: dict[str, list[tuple[str, str]]] = {zone: [] for zone in zones}
    for host, names in sorted(acme.items()):
        for name in names:
            zone = max((z for z in zones if name == z or name.endswith(f".{z}")),
                       key=len, default=None)
            if zone is not None:
                grants[zone].append((acme_key_name(host), f"_acme-challenge.{name}."))
    return grants


def _acme_key_file(host: str) -> str:
    return f"/etc/bind/mailfleet-{acme_key_name(host)}.key"


def _script(zones: list[str], acme: dict[str, list[str]] | None = None) -> str:
    """Idempotent: install BIND, make the keys once, (re)write the config, keep zone data.
    Prints the zone key, then each ACME key."""
    acme = acme or {}
    files = {
        "/etc/bind/named.conf.options": render("lab/named.conf.options.j2"),
        "/etc/bind/named.conf.local": render(
            "lab/named.conf.local.j2", zones=zones, key_file=KEY_FILE, key_name=KEY_NAME,
            acme_key_files=[_acme_key_file(h) for h in sorted(acme)],
            grants=acme_grants(zones, acme)),
    }
    lines = [
        "set -eu", "export DEBIAN_FRONTEND=noninteractive",
        "command -v named >/dev/null || apt-get install -y -q --no-install-recommends "
        "bind9 bind9-utils bind9-dnsutils >/dev/null",
        f"[ -s {KEY_FILE} ] || tsig-keygen -a hmac-sha256 {KEY_NAME} > {KEY_FILE}",
        f"chown root:bind {KEY_FILE}; chmod 0640 {KEY_FILE}",
    ]
    for host in sorted(acme):
        # host names are validated, and quoted anyway: this script runs as root
        path, name = shlex.quote(_acme_key_file(host)), shlex.quote(acme_key_name(host))
        lines += [f"[ -s {path} ] || tsig-keygen -a hmac-sha256 {name} > {path}",
                  f"chown root:bind {path}; chmod 0640 {path}"]
    for path, content in files.items():
        lines.append(f"cat > {path} <<'MAILFLEET_EOF'\n{content}MAILFLEET_EOF")
    for zone in zones:
        path = shlex.quote(f"/var/lib/bind/db.{zone}")
        content = render("lab/zone.j2", zone=zone, nameserver=NAMESERVER)
        lines.append(f"[ -s {path} ] || {{ cat > {path} <<'MAILFLEET_EOF'\n{content}MAILFLEET_EOF\n"
                     f"chown bind:bind {path}; }}")
    lines += ["named-checkconf", "systemctl restart named",
              "for i in $(seq 50); do rndc status >/dev/null 2>&1 && break; sleep 0.1; done",
              f"cat {KEY_FILE}", *(f"cat {_acme_key_file(h)}" for h in sorted(acme))]
    return "\n".join(lines) + "\n"


def run_script(lab: Lab, node: str, user: str, script: str, timeout: float = 300,
               what: str = "DNS") -> str:
    cmd = lab.ssh_command(node, ["bash", "-s"], user)
    done = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise LabError(f"Setting up {what} on lab node {node} failed: {detail}")
    return done.stdout


def _keys(text: str) -> list[str]:
    """The `key "NAME" { ... };` blocks of tsig-keygen's output, in order."""
    starts = [i for i in range(len(text)) if text.startswith("key ", i)
              and (i == 0 or text[i - 1] == "\n")]
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)])]


def _write_key(path: Path, text: str) -> Path:
    """A key copy created 0600 before its secret is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    return path


def setup(lab: Lab, node: str, zones: list[str], users: dict[str, str],
          acme: dict[str, list[str]] | None = None) -> LabDns:
    """BIND on `node` for `zones` (+ the lab's reverse zone); every node resolves through it.
    `users` maps node names to the login to use (root, or the admin after a deploy). `acme`
    maps hosts to their certificate names: each gets its own key for their DNS-01 challenges
    (added to those of earlier calls, which the lab remembers)."""
    zones = list(dict.fromkeys([*zones, REVERSE_ZONE]))
    state = lab.running_state()
    dns_node = lab.node(node)
    remembered = lab.paths.state_dir / "dns-acme.json"
    hosts: dict[str, list[str]] = json.loads(remembered.read_text()) if remembered.exists() else {}
    hosts.update(acme or {})
    output = run_script(lab, node, users.get(node, "root"), _script(zones, hosts))
    zone_key, *host_keys = _keys(output[output.index("key "):])
    key_file = _write_key(lab.paths.state_dir / "dns-tsig.key", zone_key)
    acme_keys = {host: _write_key(lab.paths.state_dir / f"dns-{acme_key_name(host)}.key", text)
                 for host, text in zip(sorted(hosts), host_keys)}
    remembered.write_text(json.dumps(hosts))
    resolver = (f"printf 'nameserver {dns_node.address}\\noptions timeout:2 attempts:2\\n' "
                "> /etc/resolv.conf\n"
                # Postfix copies resolv.conf into its chroot when it starts
                "if systemctl -q is-active postfix; then systemctl restart postfix; fi\n")
    for other in state.nodes:
        run_script(lab, other.name, users.get(other.name, "root"), resolver, timeout=60)
    return LabDns(node, dns_node.address, lab.forward(node, 53), zones, key_file, acme_keys)
