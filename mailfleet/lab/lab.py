"""Local test hosts: booted Debian systems in network namespaces, reachable over SSH.

`up` boots nodes n1..nN from cached root filesystems (overlay mounts, so the cache stays
untouched), gives each its own SSH host keys, an apt proxy and a name, forwards a loopback
port to each node's SSH, and records every pid, mount and namespace in a state file.
`down` undoes all of it. Leftovers of a killed run are found by their names and by our
state directory in their command lines, never by guessing.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mailfleet.errors import LabError, UsageError
from mailfleet.lab import images, network
from mailfleet.lab.paths import DEFAULT_RELEASE, RELEASES, LabPaths, lab_id
from mailfleet.netutil import free_port, port_open, wait_until
from mailfleet.lab.system import (
    alive,
    cmdline,
    ensure_machine_tools,
    pids_mentioning,
    require_root,
    run,
    spawn,
    stop_pids,
    wait_for_ssh_banner,
)

PROXY_PORT_IN_LAB = 3142
BOOT_TIMEOUT = 90.0
MAX_NODES = 9
# A fresh VPS: root and the provider's default user log in with this password.
VPS_USER = "linuxuser"
VPS_USER_UID = 1000
VPS_PASSWORD = "lab-vps-password"


@dataclass
class Node:
    name: str
    release: str
    address: str
    ssh_port: int
    pid: int = 0
    boot_seconds: float = 0.0

    @property
    def debian(self) -> str:
        return RELEASES[self.release]


@dataclass
class LabState:
    id: str
    gateway: str = network.GATEWAY
    proxy_port: int = 0
    helpers: list[int] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    forwards: dict[str, int] = field(default_factory=dict)  # "n3:53" -> loopback port
    operator: str = ""  # address of the operator namespace, when there is one
    tunnels: list[int] = field(default_factory=list)  # the operator's wireguard-go pids

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        data = json.loads(text)
        data["nodes"] = [Node(**n) for n in data.get("nodes", [])]
        return cls(**data)


class Lab:
    def __init__(self, id: str | None = None, log=print) -> None:
        self.paths = LabPaths(id or lab_id())
        self.log = log

    # ----- reading -------------------------------------------------------------------
    def state(self) -> LabState | None:
        try:
            return LabState.from_json(self.paths.state_file.read_text())
        except (OSError, ValueError, TypeError):
            return None

    def status(self) -> dict:
        state = self.state()
        nodes = state.nodes if state else []
        return {
            "lab": self.paths.id,
            "running": bool(nodes) and all(alive(n.pid) for n in nodes),
            "nodes": [
                {
                    "name": n.name,
                    "release": n.release,
                    "debian": n.debian,
                    "address": n.address,
                    "ssh": f"127.0.0.1:{n.ssh_port}",
                    "running": alive(n.pid),
                }
                for n in nodes
            ],
        }

    def running_state(self) -> LabState:
        state = self.state()
        if not state or not state.nodes:
            raise UsageError(
                f"Lab {self.paths.id!r} is not running.", hint="Start it with `mailfleet lab up`."
            )
        return state

    def node(self, name: str) -> Node:
        state = self.running_state()
        for node in state.nodes:
            if node.name == name:
                return node
        names = ", ".join(n.name for n in state.nodes)
        raise UsageError(f"No lab node named {name!r} (nodes: {names}).")

    def ssh_login(self, name: str, user: str = "root") -> list[str]:
        """`ssh` as `user` on the node with the lab's key and host keys, up to the
        destination: add `-- COMMAND` to run something."""
        node = self.node(name)
        return [
            "ssh", "-i", str(self.paths.ssh_key), "-o", "IdentitiesOnly=yes",
            "-p", str(node.ssh_port),
            "-o", f"UserKnownHostsFile={self.paths.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR", f"{user}@127.0.0.1",
        ]

    def ssh_command(self, name: str, command: list[str] | None = None,
                    user: str = "root") -> list[str]:
        """Root on the node: directly, or through sudo once deploy made `user` the only
        login."""
        cmd = self.ssh_login(name, user)
        line = " ".join(command or [])  # like ssh: the remote shell parses it
        if user == "root":
            return cmd + (["--", line] if line else [])
        if line:
            return cmd + ["--", f"sudo -n sh -c {shlex.quote(line)}"]
        return [*cmd[:1], "-t", *cmd[1:], "--", "sudo -n -i"]

    def exec_command(self, command: list[str]) -> list[str]:
        """A local program run inside the lab network (it reaches nodes by their addresses)."""
        self.running_state()
        return ["ip", "netns", "exec", self.paths.bridge_ns, *command]

    # ----- up ------------------------------------------------------------------------
    def up(self, releases: list[str], nodes: int | None = None,
           preinstall: list[str] | None = None) -> LabState:
        releases = releases or [DEFAULT_RELEASE]
        for release in releases:
            if release not in RELEASES:
                raise UsageError(
                    f"Unknown release {release!r}: choose {' or '.join(RELEASES)}."
                )
        count = nodes if nodes is not None else len(releases)
        if not 1 <= count <= MAX_NODES:
            raise UsageError(f"--nodes must be between 1 and {MAX_NODES}, not {count}.")
        if len(releases) > 1 and len(releases) != count:
            raise UsageError(
                f"{len(releases)} releases were given for {count} nodes: give one release for "
                "all nodes, or one per node."
            )
        require_root()
        ensure_machine_tools(self.log)
        self.down(quiet=True)  # our own leftovers from a killed run, or the previous lab
        roots = {r: images.ensure_rootfs(r, self.log, preinstall) for r in set(releases)}

        paths = self.paths
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        paths.apt_archives.joinpath("partial").mkdir(parents=True, exist_ok=True)
        state = LabState(id=paths.id)
        self._save(state)
        try:
            self._make_key()
            network.create_bridge(paths.bridge_ns)
            self._start_proxy(state)
            plan = [
                Node(
                    name=f"n{i}",
                    release=releases[(i - 1) % len(releases)],
                    address=network.node_address(i),
                    ssh_port=free_port(),
                )
                for i in range(1, count + 1)
            ]
            started = {node.name: self._boot(state, node, roots[node.release], plan)
                       for node in plan}
            self._write_known_hosts(state)
            for node in state.nodes:
                if not wait_for_ssh_banner(node.ssh_port, BOOT_TIMEOUT):
                    raise LabError(
                        f"Node {node.name} did not answer on SSH within {BOOT_TIMEOUT:.0f} s.",
                        hint=f"See {paths.node_dir(node.name) / 'console.log'}.",
                    )
                node.boot_seconds = round(time.monotonic() - started[node.name], 2)
            self._save(state)
        except BaseException:
            self.down(quiet=True)
            raise
        return state

    def _save(self, state: LabState) -> None:
        tmp = self.paths.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(self.paths.state_file)

    def _make_key(self) -> None:
        key = self.paths.ssh_key
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mailfleet-lab-{self.paths.id}",
                 "-f", str(key)])

    def _start_proxy(self, state: LabState) -> None:
        """tinyproxy on loopback, reachable in the lab as GATEWAY:3142 through a unix socket."""
        paths = self.paths
        state.proxy_port = free_port()
        conf = paths.state_dir / "tinyproxy.conf"
        conf.write_text(
            "# mailfleet lab apt proxy: loopback only\n"
            f"Port {state.proxy_port}\nListen 127.0.0.1\nAllow 127.0.0.1\n"
            "User nobody\nGroup nogroup\nTimeout 600\nMaxClients 100\nLogLevel Warning\n"
            "DisableViaHeader Yes\nConnectPort 443\n"
        )
        sock = paths.socket("proxy")
        log = paths.state_dir / "helpers.log"
        state.helpers.append(spawn(["tinyproxy", "-d", "-c", str(conf)], log))
        state.helpers.append(spawn(
            ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600",
             f"TCP:127.0.0.1:{state.proxy_port}"], log))
        state.helpers.append(spawn(
            ["ip", "netns", "exec", paths.bridge_ns, "socat",
             f"TCP-LISTEN:{PROXY_PORT_IN_LAB},bind={network.GATEWAY},reuseaddr,fork",
             f"UNIX-CONNECT:{sock}"], log))
        self._save(state)

    def _boot(self, state: LabState, node: Node, base: Path, plan: list[Node]) -> float:
        """Mount, personalise and start one node; returns when it started (monotonic)."""
        paths = self.paths
        node_dir = paths.node_dir(node.name)
        shutil.rmtree(node_dir, ignore_errors=True)
        upper, work, root = node_dir / "upper", node_dir / "work", node_dir / "root"
        for d in (upper, work, root, node_dir / "apt"):
            d.mkdir(parents=True)
        started = time.monotonic()
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={base},upperdir={upper},workdir={work}", str(root)])
        self._personalise(root, node, plan)
        ns = paths.node_ns(node.name)
        network.attach_node(paths.bridge_ns, ns, node.name, node.address)
        node.pid = self._spawn(node)
        state.nodes.append(node)
        self._forward(state, node, 22, node.ssh_port)
        return started

    def _spawn(self, node: Node) -> int:
        """Boot the node's mounted root in its namespace."""
        paths = self.paths
        node_dir = paths.node_dir(node.name)
        return spawn(
            [
                "systemd-nspawn", "-D", str(node_dir / "root"), "-b", "-M", node.name,
                "--register=no", "--keep-unit", "--resolv-conf=off", "--link-journal=no",
                "--capability=CAP_NET_ADMIN",
                f"--network-namespace-path=/run/netns/{paths.node_ns(node.name)}",
                # the shared .deb cache, read-only below a per-node layer: apt's lock file in
                # that directory would otherwise let only one node install at a time
                f"--overlay={paths.apt_archives}:{node_dir / 'apt'}:/var/cache/apt/archives",
            ],
            node_dir / "console.log",
            env={"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
        )

    def restart(self, name: str) -> float:
        """Power the node off and boot it again, as a reboot of a VPS would: its disk stays,
        its network namespace's firewall rules are flushed first (they would outlive the
        node, and a test of what comes back at boot must not see them). Seconds to SSH."""
        state = self.running_state()
        node = self.node(name)
        stop_pids([node.pid], timeout=30)
        ns = self.paths.node_ns(name)
        run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=False)
        started = time.monotonic()
        node.pid = self._spawn(node)
        for i, known in enumerate(state.nodes):
            if known.name == name:
                state.nodes[i] = node
        self._save(state)
        def booted() -> bool:
            if self._init_pid(node) is None:
                return False
            done = self.exec(name, "systemctl is-system-running", check=False)
            return done.stdout.strip() in ("running", "degraded")

        if not wait_until(booted, BOOT_TIMEOUT, interval=0.5):
            raise LabError(f"Node {name} did not boot again within {BOOT_TIMEOUT:.0f} s.")
        return round(time.monotonic() - started, 2)

    @staticmethod
    def _init_pid(node: Node) -> int | None:
        """The node's PID 1 as this machine sees it (the nspawn process's descendant that is
        1 in its own PID namespace)."""
        todo = [node.pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            nspid = next((l.split()[1:] for l in status.splitlines() if l.startswith("NSpid:")), [])
            if pid != node.pid and nspid and nspid[-1] == "1" and len(nspid) > 1:
                return pid
            todo += [int(c) for c in children]
        return None

    def exec(self, name: str, command: str, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A shell command as root inside the node, without SSH (which a test may have
        closed): nsenter into its PID 1's namespaces."""
        node = self.node(name)
        init = self._init_pid(node)
        if init is None:
            raise LabError(f"Node {name} is not running.")
        return run(["nsenter", "-t", str(init), "-m", "-u", "-i", "-n", "-p", "--",
                    "sh", "-c", command], check=check, timeout=timeout)

    # ----- the operator's machine inside the lab -----------------------------------------
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

    def _forward(self, state: LabState, node: Node, remote: int, local: int) -> None:
        """127.0.0.1:local → node:remote (TCP), through a unix socket into the lab network."""
        paths = self.paths
        sock = paths.socket(f"{node.name}-{remote}")
        helpers_log = paths.state_dir / "helpers.log"
        state.helpers.append(spawn(
            ["ip", "netns", "exec", paths.bridge_ns, "socat",
             f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600", f"TCP:{node.address}:{remote}"],
            helpers_log))
        # the loopback side only once the inner side listens: a first client could otherwise
        # reach a forward whose unix socket is not there yet and get its connection closed
        if not wait_until(sock.exists, 10):
            raise LabError(f"The forward to {node.name}:{remote} did not start.")
        state.helpers.append(spawn(
            ["socat", f"TCP-LISTEN:{local},bind=127.0.0.1,reuseaddr,fork",
             f"UNIX-CONNECT:{sock}"], helpers_log))
        self._save(state)

    def forward(self, name: str, remote: int) -> int:
        """A loopback port reaching `remote` on lab node `name`; made once, kept until down."""
        state = self.running_state()
        key = f"{name}:{remote}"
        if key not in state.forwards:
            node = next(n for n in state.nodes if n.name == name)
            state.forwards[key] = free_port()
            self._forward(state, node, remote, state.forwards[key])
            if not wait_until(lambda: port_open(state.forwards[key]), 10):
                raise LabError(f"The forward to {name}:{remote} did not start.")
        return state.forwards[key]

    def _personalise(self, root: Path, node: Node, plan: list[Node]) -> None:
        """What makes a copy of the image this node: host keys, admin key, name, apt proxy."""
        run(["ssh-keygen", "-q", "-A", "-f", str(root)])
        auth = root / "root/.ssh/authorized_keys"
        auth.write_text(self.paths.ssh_key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{node.name}",
                 "::1\tlocalhost ip6-localhost ip6-loopback", f"{network.GATEWAY}\tgateway"]
        hosts += [f"{other.address}\t{other.name}" for other in plan]
        (root / "etc/hosts").write_text("\n".join(hosts) + "\n")
        (root / "etc/apt/apt.conf.d/01mailfleet-lab-proxy").write_text(
            f'Acquire::http::Proxy "http://{network.GATEWAY}:{PROXY_PORT_IN_LAB}";\n'
        )
        self._look_like_a_fresh_vps(root)

    @staticmethod
    def _look_like_a_fresh_vps(root: Path) -> None:
        """What a VPS provider hands over: root with a password and a key, a default user
        with sudo (Vultr's linuxuser, uid 1000) and password logins allowed over SSH, the way
        cloud-init's 50-cloud-init.conf allows them. Deploy must take all that away."""
        hashed = run(["openssl", "passwd", "-6", "-stdin"], input=VPS_PASSWORD).stdout.strip()
        run(["useradd", "--root", str(root), "-m", "-u", str(VPS_USER_UID), "-s", "/bin/bash",
             "-G", "sudo", "-p", hashed, VPS_USER])
        run(["usermod", "--root", str(root), "-p", hashed, "root"])
        (root / "etc/ssh/sshd_config.d/50-cloud-init.conf").write_text(
            "PasswordAuthentication yes\nPermitRootLogin yes\n")

    def _write_known_hosts(self, state: LabState) -> None:
        lines = []
        for node in state.nodes:
            etc_ssh = self.paths.node_dir(node.name) / "root/etc/ssh"
            for pub in sorted(etc_ssh.glob("ssh_host_*_key.pub")):
                kind, key = pub.read_text().split()[:2]
                lines.append(f"[127.0.0.1]:{node.ssh_port} {kind} {key}")
        self.paths.known_hosts.write_text("\n".join(lines) + "\n")

    # ----- down ----------------------------------------------------------------------
    def down(self, quiet: bool = False) -> bool:
        """Stop everything this lab started; True if there was anything to stop."""
        require_root()
        paths = self.paths
        state = self.state()
        marker = str(paths.state_dir) + "/"
        found = False
        # nodes first (they shut down cleanly on SIGTERM), then the helpers
        ours = set(pids_mentioning(marker))
        node_pids = [n.pid for n in state.nodes if n.pid in ours] if state else []
        # the operator's wireguard-go (its command line cannot name our directory)
        tunnels = [p for p in (state.tunnels if state else [])
                   if (cmdline(p) or "").startswith("wireguard-go")]
        if tunnels:
            found = True
            stop_pids(tunnels, timeout=5)
        if node_pids:
            found = True
            stop_pids(node_pids, timeout=20)
        leftovers = pids_mentioning(marker)
        if leftovers:
            found = True
            stop_pids(leftovers, timeout=5)
        for mount in self._own_mounts(marker):
            found = True
            if run(["umount", mount], check=False).returncode != 0:
                run(["umount", "-l", mount], check=False)
        for ns in network.own_namespaces(paths.netns_prefix):
            found = True
            network.delete(ns)
        if paths.state_dir.exists():
            found = found or paths.state_file.exists()
            self._keep_downloads()
            shutil.rmtree(paths.state_dir / "nodes", ignore_errors=True)
            for leftover in paths.state_dir.glob("*.sock"):
                leftover.unlink(missing_ok=True)
            paths.state_file.unlink(missing_ok=True)
            # the hosts given DNS-01 keys by `lab dns` belong to this run of the lab
            (paths.state_dir / "dns-acme.json").unlink(missing_ok=True)
        if found and not quiet:
            self.log(f"lab {paths.id} stopped")
        return found

    def _keep_downloads(self) -> None:
        """Move the .debs the nodes fetched into the shared cache, for the next lab."""
        shared = self.paths.apt_archives
        shared.mkdir(parents=True, exist_ok=True)
        for deb in (self.paths.state_dir / "nodes").glob("*/apt/*.deb"):
            if deb.is_file() and not (shared / deb.name).exists():
                deb.rename(shared / deb.name)

    @staticmethod
    def _own_mounts(marker: str) -> list[str]:
        mounts = []
        for line in Path("/proc/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if (target + "/").startswith(marker):
                mounts.append(target)
        return sorted(mounts, key=len, reverse=True)

