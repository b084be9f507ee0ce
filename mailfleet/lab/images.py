"""Cached Debian root filesystems, one per release, that every lab node boots from.

Built once with mmdebstrap (≈ 16 s, 175 MB) and then only read: each node boots an
overlay of it, so a node's changes never reach the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from pathlib import Path

from mailfleet.lab.mirror import lab_mirror
from mailfleet.lab.paths import RELEASES, rootfs_dir
from mailfleet.lab.system import run

BASE_PACKAGES = ["systemd", "systemd-sysv", "dbus", "openssh-server", "iproute2", "ca-certificates"]
# Bump when the preparation below changes, so old caches are rebuilt.
IMAGE_VERSION = 1
STAMP = ".mailfleet-image.json"
MAX_AGE_DAYS = 14  # older package lists start to 404 on the mirror

# Fast answers instead of 20 s stalls: the machine's resolver is unreachable from the lab.
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
SYSTEMD_LAB_CONF = """\
# mailfleet lab: a stuck stop job (postfix, dovecot) must not hold a node's shutdown for 90 s
[Manager]
DefaultTimeoutStopSec=10s
"""
APT_KEEP_DEBS = """\
// mailfleet lab: the archive directory is shared between nodes; keep what was fetched
Binary::apt::APT::Keep-Downloaded-Packages "true";
APT::Keep-Downloaded-Packages "true";
"""
CLOUD_CFG = """\
# mailfleet lab: the user-data comes from /var/lib/cloud/seed/nocloud/, as a provider's would
datasource_list: [ NoCloud, None ]
# a minbase tree has no locales package for cloud-init's update-locale
locale: false
"""


def ensure_rootfs(release: str, log=print, preinstall: list[str] | None = None) -> Path:
    """The cached root filesystem of `release`, built if missing, outdated or too old.

    With `preinstall` (the packages `deploy` installs), an image with them already
    installed: tests that are not about installation start there and skip minutes of
    dpkg. Each package list gets its own image, named by its hash.
    """
    if release not in RELEASES:
        raise ValueError(release)
    packages = sorted(set(preinstall or []))
    target = rootfs_dir(release)
    if packages:
        digest = hashlib.sha1(" ".join(packages).encode()).hexdigest()[:10]
        target = target.with_name(f"{release}-{digest}")
    mirror = lab_mirror()
    _sweep(target)
    if _is_current(target, mirror):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{release}.lock"), "w") as lock:
        # two labs starting at once (two test workers, two runs) build it once: the second
        # waits here, then finds it current (the lock is per release, as older mailfleet
        # versions on the same machine take it, so that they never build into one scratch)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_current(target, mirror):
            return target
        _build(release, target, packages, mirror, log)
    return target


def _build(release: str, target: Path, packages: list[str], mirror: str, log) -> None:
    what = f"with {len(packages)} preinstalled packages " if packages else ""
    log(f"building the Debian {RELEASES[release]} ({release}) root filesystem {what}(once)")
    started = time.monotonic()
    scratch = target.with_name(target.name + ".new")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join([*BASE_PACKAGES, *packages])}",
            "--skip=cleanup/apt/lists",
            release,
            str(scratch),
            mirror,
        ]
    )
    _prepare(scratch, cloud_init="cloud-init" in packages)
    (scratch / STAMP).write_text(
        json.dumps({"release": release, "version": IMAGE_VERSION, "built": time.time(),
                    "packages": packages, "mirror": mirror})
    )
    if target.exists():
        # a running lab (another test worker's, another run's) may boot nodes from the old
        # copy: it moves aside, and goes only once no lab mounts this image any more
        target.rename(target.with_name(f"{target.name}.old-{time.time_ns()}"))
    scratch.rename(target)
    _sweep(target)
    log(f"root filesystem ready in {time.monotonic() - started:.0f} s")


def in_use(target: Path, mounts: str | None = None) -> bool:
    """Does a node of a running lab boot from the image at `target` (an overlay mount with it
    as its lower layer)? /proc/mounts names the path as it was at mount time, so a copy that
    was moved aside since still counts under this name."""
    text = Path("/proc/mounts").read_text() if mounts is None else mounts
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "overlay":
            continue
        for option in fields[3].split(","):
            if option.startswith("lowerdir=") and str(target) in option[9:].split(":"):
                return True
    return False


def _sweep(target: Path) -> None:
    """Remove the old copies of `target` moved aside by a rebuild, once no lab mounts the
    image (any node booted from an old copy was mounted under this very name)."""
    old = list(target.parent.glob(f"{target.name}.old*")) if target.parent.is_dir() else []
    if old and not in_use(target):
        for path in old:
            shutil.rmtree(path, ignore_errors=True)


def _is_current(target: Path, mirror: str) -> bool:
    try:
        stamp = json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return False
    fresh = time.time() - stamp.get("built", 0) < MAX_AGE_DAYS * 86400
    # an image from another mirror would send its nodes' apt there: rebuild it
    return stamp.get("version") == IMAGE_VERSION and fresh and stamp.get("mirror") == mirror


def _prepare(root: Path, cloud_init: bool = False) -> None:
    """Make the tree a template: no identity of its own, fast DNS failures, quick shutdown."""
    if cloud_init:
        # the lab hands its nodes' user-data over in a seed directory, as NoCloud reads it;
        # looking for a provider's metadata server first would only time out here
        _write(root / "etc/cloud/cloud.cfg.d/99-mailfleet-lab.cfg", CLOUD_CFG)
    (root / "etc/hostname").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text(RESOLV_CONF)
    _write(root / "etc/systemd/system.conf.d/mailfleet-lab.conf", SYSTEMD_LAB_CONF)
    _write(root / "etc/apt/apt.conf.d/10mailfleet-lab-keep-debs", APT_KEEP_DEBS)
    _write(root / "var/lib/apt/periodic/update-success-stamp", "")
    # a cluster's etcd starts once mailfleet configured it (Debian's would form a cluster of
    # its own at boot, on every node)
    for unit in ("etcd.service", "etcd2.service"):
        (root / "etc/systemd/system/multi-user.target.wants" / unit).unlink(missing_ok=True)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
