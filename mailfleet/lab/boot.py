"""Booting a lab: each node from a cached root filesystem under an overlay, personalised
(host keys, admin key, name, apt proxy, a fresh VPS's logins), started with systemd-nspawn in
its own network namespace; and restarting or entering a node later."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from mailfleet.errors import LabError, UsageError
from mailfleet.lab import images, network
from mailfleet.lab.paths import DEFAULT_RELEASE, RELEASES, LabPaths
from mailfleet.lab.state import LabState, Node
from mailfleet.netutil import free_port, wait_until
from mailfleet.lab.system import (
    alive,
    ensure_inotify_instances, ensure_machine_tools,
    kill_pid,
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


class Booting:
    """The Lab's booting part: `up`, `restart` and `exec` (mixed into lab.Lab)."""

    paths: LabPaths

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
        ensure_machine_tools(self.paths.state_dir.parent, self.log)  # the lab's state root
        ensure_inotify_instances(self.log)
        self.down(quiet=True)  # our own leftovers from a killed run, or the previous lab
        roots = {r: images.ensure_rootfs(r, self.log, preinstall) for r in set(releases)}

        paths = self.paths
        state = LabState(id=paths.id)
        try:
            self._start_network(state)
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

    def _start_network(self, state: LabState) -> None:
        """The lab without nodes: its state file, key, bridge and apt proxy."""
        paths = self.paths
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        paths.apt_archives.joinpath("partial").mkdir(parents=True, exist_ok=True)
        self._save(state)
        self._make_key()
        network.create_bridge(paths.bridge_ns)
        self._start_proxy(state)

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

    def _boot(self, state: LabState, node: Node, base: Path, plan: list[Node],
              seed: dict[str, str] | None = None) -> float:
        """Mount, personalise and start one node; returns when it started (monotonic).
        With a cloud-init `seed`, the node gets its identity from that alone, as a VPS does."""
        paths = self.paths
        node_dir = paths.node_dir(node.name)
        shutil.rmtree(node_dir, ignore_errors=True)
        upper, work, root = node_dir / "upper", node_dir / "work", node_dir / "root"
        for d in (upper, work, root, node_dir / "apt"):
            d.mkdir(parents=True)
        started = time.monotonic()
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={base},upperdir={upper},workdir={work}", str(root)])
        if seed is None:
            self._personalise(root, node, plan)
        else:
            self._seed(root, node, plan, seed)
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
        node = self.node(name)
        stop_pids([node.pid], timeout=30)
        return self.start(name)

    def stop(self, name: str) -> None:
        """Power the node off at once, as a crashed VPS: its PID 1 killed (the kernel ends
        every process of the node with it), nothing shut down cleanly; its disk stays."""
        node = self.node(name)
        init = self._init_pid(node)
        if init is not None:
            kill_pid(init)
        stop_pids([node.pid], timeout=10)

    def start(self, name: str) -> float:
        """Boot a stopped node again from its disk (its firewall rules in the namespace
        flushed first: they would outlive the node). Seconds until it has booted."""
        state = self.running_state()
        node = self.node(name)
        if alive(node.pid):
            raise UsageError(f"Node {name} is running already.")
        ns = self.paths.node_ns(name)
        run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=False)
        started = time.monotonic()
        node.pid = self._spawn(node)
        for i, known in enumerate(state.nodes):
            if known.name == name:
                state.nodes[i] = node
        self._save(state)
        def booted() -> bool:
            # (early in the boot the process that is PID 1 in the node's namespace can
            # change between two looks: exec's own look may not find it, which is "not yet")
            if self._init_pid(node) is None:
                return False
            try:
                done = self.exec(name, "systemctl is-system-running", check=False)
            except LabError:
                return False
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

    def _personalise(self, root: Path, node: Node, plan: list[Node]) -> None:
        """What makes a copy of the image this node: host keys, admin key, name, apt proxy."""
        run(["ssh-keygen", "-q", "-A", "-f", str(root)])
        auth = root / "root/.ssh/authorized_keys"
        auth.write_text(self.paths.ssh_key.with_suffix(".pub").read_text())
        auth.chmod(0o600)
        if (root / "etc/cloud").is_dir():
            # an image made for `provision` too: here the lab, not cloud-init, made the node
            (root / "etc/cloud/cloud-init.disabled").touch()
        self._lab_network(root, node, plan)
        self._look_like_a_fresh_vps(root)

    def _seed(self, root: Path, node: Node, plan: list[Node], seed: dict[str, str]) -> None:
        """A node that cloud-init makes at its first boot from NoCloud's seed directory:
        host key, root's key and name come from the user-data only (no lab key, no
        ssh-keygen here). The lab's own network settings are written as for any node."""
        seed_dir = root / "var/lib/cloud/seed/nocloud"
        seed_dir.mkdir(parents=True, mode=0o700)
        for name, text in seed.items():
            path = seed_dir / name
            path.touch(mode=0o600)  # the user-data holds the host's private key
            path.write_text(text)
        self._lab_network(root, node, plan)

    @staticmethod
    def _lab_network(root: Path, node: Node, plan: list[Node]) -> None:
        """/etc/hosts naming the lab's nodes, and the lab's apt proxy."""
        hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{node.name}",
                 "::1\tlocalhost ip6-localhost ip6-loopback", f"{network.GATEWAY}\tgateway"]
        hosts += [f"{other.address}\t{other.name}" for other in plan]
        (root / "etc/hosts").write_text("\n".join(hosts) + "\n")
        (root / "etc/apt/apt.conf.d/01mailfleet-lab-proxy").write_text(
            f'Acquire::http::Proxy "http://{network.GATEWAY}:{PROXY_PORT_IN_LAB}";\n'
        )
        # the image's package lists count as fetched when the node was made, not when the
        # image was: a cached image turning 6 h old mid-run would start deploy's apt-get update
        # (APT_CACHE_SECONDS) between two deploys of one test
        (root / "var/lib/apt/periodic/update-success-stamp").touch()

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
