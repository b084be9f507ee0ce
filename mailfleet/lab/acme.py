"""The lab's ACME server: Pebble (Let's Encrypt's test CA, Debian package `pebble`) on one
node, checking names through the lab's DNS, so `deploy` with [acme] gets real ACME
certificates without the Internet.

Pebble makes a new root CA each time it starts (fetch it from the management port,
https://NODE:15000/roots/0, to verify what it issued). Its own HTTPS listener has a
certificate made here once; [acme] directory_ca_file names it so certbot trusts the listener.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mailfleet.lab.dns import run_script
from mailfleet.lab.lab import Lab

ACME_PORT = 14000
MANAGEMENT_PORT = 15000
CONFIG_DIR = "/etc/pebble"

UNIT = """\
[Unit]
Description=Pebble, a small ACME test server (mailfleet lab)
After=network-online.target named.service

[Service]
# no waiting before validations; every nonce accepted (certbot never retries a bad one)
Environment=PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0
ExecStart=/usr/bin/pebble -config {config_dir}/pebble-config.json -dnsserver {dns}
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class LabAcme:
    node: str
    address: str
    directory: str        # what certbot on the lab hosts asks
    listener_ca: Path     # this machine's copy of the listener certificate (self-signed)
    management_port: int  # on this machine's loopback: /roots/0 is the current root CA


def _script(address: str, dns: str) -> str:
    config = {"pebble": {
        "listenAddress": f"0.0.0.0:{ACME_PORT}",
        "managementListenAddress": f"0.0.0.0:{MANAGEMENT_PORT}",
        "certificate": f"{CONFIG_DIR}/listener.crt",
        "privateKey": f"{CONFIG_DIR}/listener.key",
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}
    return "\n".join([
        "set -eu", "export DEBIAN_FRONTEND=noninteractive",
        "command -v pebble >/dev/null && command -v curl >/dev/null || apt-get install -y -q "
        "--no-install-recommends pebble openssl curl >/dev/null",
        f"install -d -m 0755 {CONFIG_DIR}",
        f"[ -s {CONFIG_DIR}/listener.key ] || openssl req -x509 -nodes -newkey ec "
        f"-pkeyopt ec_paramgen_curve:prime256v1 -days 3650 -subj /CN=pebble-listener "
        f"-addext subjectAltName=IP:{address},DNS:localhost -keyout {CONFIG_DIR}/listener.key "
        f"-out {CONFIG_DIR}/listener.crt 2>/dev/null",
        f"cat > {CONFIG_DIR}/pebble-config.json <<'MAILFLEET_EOF'\n{json.dumps(config, indent=2)}\n"
        "MAILFLEET_EOF",
        f"cat > /etc/systemd/system/pebble.service <<'MAILFLEET_EOF'\n"
        f"{UNIT.format(config_dir=CONFIG_DIR, dns=dns)}MAILFLEET_EOF",
        "systemctl daemon-reload", "systemctl enable -q pebble", "systemctl restart pebble",
        f"for i in $(seq 100); do curl -sk -o /dev/null https://127.0.0.1:{ACME_PORT}/dir "
        "&& break; sleep 0.1; done",
        f"curl -sfk -o /dev/null https://127.0.0.1:{ACME_PORT}/dir",
        f"cat {CONFIG_DIR}/listener.crt",
    ]) + "\n"


def setup(lab: Lab, node: str, dns: str, user: str = "root") -> LabAcme:
    """Pebble on `node`, resolving names with the DNS server at `dns` (IP:PORT)."""
    address = lab.node(node).address
    pem = run_script(lab, node, user, _script(address, dns), timeout=300, what="Pebble")
    listener_ca = lab.paths.state_dir / "acme-listener.pem"
    listener_ca.write_text(pem[pem.index("-----BEGIN"):])
    return LabAcme(node, address, f"https://{address}:{ACME_PORT}/dir", listener_ca,
                   lab.forward(node, MANAGEMENT_PORT))
