"""The lab's DNS: BIND 9 on one node, authoritative for the lab's zones, accepting RFC 2136
updates signed with a TSIG key, and the resolver of every lab node.

With `recursion no` BIND still answers its own zones to the nodes' stub resolvers, and
answers nothing else: the lab has no Internet to recurse into.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mailfleet.errors import LabError
from mailfleet.lab import network
from mailfleet.lab.lab import Lab
from mailfleet.templating import render

KEY_NAME = "mailfleet-lab"
KEY_FILE = "/etc/bind/mailfleet-lab.key"
NAMESERVER = "ns.lab.test"  # out of every zone: no glue needed
REVERSE_ZONE = ipaddress.ip_network(network.SUBNET).network_address.reverse_pointer.split(".", 1)[1]


@dataclass(frozen=True)
class LabDns:
    node: str
    address: str     # inside the lab
    port: int        # on this machine's loopback, forwarded to the node's TCP 53
    zones: list[str]
    key_file: Path   # a copy of the TSIG key, for [[dns.zones]]


def _script(zones: list[str]) -> str:
    """Idempotent: install BIND, make the key once, (re)write the config, keep zone data."""
    files = {
        "/etc/bind/named.conf.options": render("lab/named.conf.options.j2"),
        "/etc/bind/named.conf.local": render("lab/named.conf.local.j2", zones=zones,
                                             key_file=KEY_FILE, key_name=KEY_NAME),
    }
    lines = [
        "set -eu", "export DEBIAN_FRONTEND=noninteractive",
        "command -v named >/dev/null || apt-get install -y -q --no-install-recommends "
        "bind9 bind9-utils bind9-dnsutils >/dev/null",
        f"[ -s {KEY_FILE} ] || tsig-keygen -a hmac-sha256 {KEY_NAME} > {KEY_FILE}",
        f"chown root:bind {KEY_FILE}; chmod 0640 {KEY_FILE}",
    ]
    for path, content in files.items():
        lines.append(f"cat > {path} <<'MAILFLEET_EOF'\n{content}MAILFLEET_EOF")
    for zone in zones:
        path = shlex.quote(f"/var/lib/bind/db.{zone}")
        content = render("lab/zone.j2", zone=zone, nameserver=NAMESERVER)
        lines.append(f"[ -s {path} ] || {{ cat > {path} <<'MAILFLEET_EOF'\n{content}MAILFLEET_EOF\n"
                     f"chown bind:bind {path}; }}")
    lines += ["named-checkconf", "systemctl restart named",
              "for i in $(seq 50); do rndc status >/dev/null 2>&1 && break; sleep 0.1; done",
              f"cat {KEY_FILE}"]
    return "\n".join(lines) + "\n"


def run_script(lab: Lab, node: str, user: str, script: str, timeout: float = 300,
               what: str = "DNS") -> str:
    cmd = lab.ssh_command(node, ["bash", "-s"], user)
    done = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise LabError(f"Setting up {what} on lab node {node} failed: {detail}")
    return done.stdout


def setup(lab: Lab, node: str, zones: list[str], users: dict[str, str]) -> LabDns:
    """BIND on `node` for `zones` (+ the lab's reverse zone); every node resolves through it.
    `users` maps node names to the login to use (root, or the admin after a deploy)."""
    zones = list(dict.fromkeys([*zones, REVERSE_ZONE]))
    state = lab.running_state()
    dns_node = lab.node(node)
    key_text = run_script(lab, node, users.get(node, "root"), _script(zones))
    key_file = lab.paths.state_dir / "dns-tsig.key"
    key_file.write_text(key_text[key_text.index("key "):])
    key_file.chmod(0o600)
    resolver = (f"printf 'nameserver {dns_node.address}\\noptions timeout:2 attempts:2\\n' "
                "> /etc/resolv.conf\n"
                # Postfix copies resolv.conf into its chroot when it starts
                "if systemctl -q is-active postfix; then systemctl restart postfix; fi\n")
    for other in state.nodes:
        run_script(lab, other.name, users.get(other.name, "root"), resolver, timeout=60)
    return LabDns(node, dns_node.address, lab.forward(node, 53), zones, key_file)
