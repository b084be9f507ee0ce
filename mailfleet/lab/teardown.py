"""Taking a lab down: its nodes, helpers, tunnels, mounts and namespaces, found by the
state file and by our state directory in their command lines, never by guessing."""

from __future__ import annotations

import shutil
from pathlib import Path

from mailfleet.lab import network
from mailfleet.lab.paths import LabPaths
from mailfleet.lab.system import (cmdline, pids_mentioning, require_root, stop_pids,
                                  unmount)


class Teardown:
    """The Lab's `down` (mixed into lab.Lab)."""

    paths: LabPaths

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
            unmount(mount)
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
