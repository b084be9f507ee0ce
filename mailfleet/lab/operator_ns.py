"""The operator's machine inside the lab: a namespace on the lab network standing for the
operator's laptop, with its WireGuard tunnel (wireguard-go) to the hosts."""

from __future__ import annotations

from pathlib import Path

from mailfleet.errors import LabError
from mailfleet.lab import network
from mailfleet.lab.paths import LabPaths
from mailfleet.lab.system import run, spawn
from mailfleet.netutil import wait_until


class Operator:
    """The Lab's operator part (mixed into lab.Lab)."""

    paths: LabPaths

    def add_operator(self) -> str:
        """A namespace on the lab network standing for the operator's laptop (address
        network.OPERATOR): a VPN peer, and where a test runs mailfleet to reach the hosts
        over the VPN only. Returns the namespace's name."""
        state = self.running_state()
        ns = self.paths.operator_ns
        if not state.operator:
            network.attach_node(self.paths.bridge_ns, ns, "op", network.OPERATOR)
            state.operator = network.OPERATOR
            self._save(state)
        return ns

    def operator_tunnel(self, conf: Path) -> str:
        """Bring up a WireGuard config (as `vpn client` writes it) in the operator namespace
        with wireguard-go, the way wg-quick would; returns the interface name."""
        state = self.running_state()
        ns = self.add_operator()
        iface = f"wg{self.paths.id}"[:15]
        sock = Path(f"/var/run/wireguard/{iface}.sock")
        log = self.paths.state_dir / "helpers.log"
        if not state.tunnels:
            state.tunnels.append(spawn(["ip", "netns", "exec", ns, "wireguard-go", "-f", iface],
                                       log, env={"LOG_LEVEL": "error"}))
            self._save(state)
            if not wait_until(sock.exists, 10):
                raise LabError(f"wireguard-go did not start in {ns} (see {log}).")
        text = conf.read_text()
        stripped = self.paths.state_dir / "operator-wg.conf"
        stripped.write_text(run(["wg-quick", "strip", str(conf)]).stdout)
        stripped.chmod(0o600)
        run(["ip", "netns", "exec", ns, "wg", "setconf", iface, str(stripped)])
        ip = ["ip", "-n", ns]
        run([*ip, "address", "flush", "dev", iface])
        for line in text.splitlines():
            key, _, value = (part.strip() for part in line.partition("="))
            if key == "Address":
                run([*ip, "address", "add", value, "dev", iface])
        run([*ip, "link", "set", iface, "up"])
        for line in text.splitlines():
            key, _, value = (part.strip() for part in line.partition("="))
            if key == "AllowedIPs":
                for net in value.split(","):
                    run([*ip, "route", "replace", net.strip(), "dev", iface])
        return iface

    def operator_command(self, command: list[str]) -> list[str]:
        """A local program run as the operator: inside the operator namespace."""
        return ["ip", "netns", "exec", self.add_operator(), *command]
