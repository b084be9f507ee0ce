"""Lab images and machine tools when two labs start at once (two test workers, two runs):
each image is built once, the machine's packages are installed once, and a rebuilt image
never disappears under a lab that still boots from it. Nothing is built or installed here."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from mailfleet.lab import images, system


def _fake_build(builds: list[str]):
    def build(release, target, packages, mirror, log):
        builds.append(target.name)
        time.sleep(0.3)  # long enough for the other caller to arrive meanwhile
        target.mkdir(parents=True, exist_ok=True)
        (target / images.STAMP).write_text(json.dumps(
            {"release": release, "version": images.IMAGE_VERSION, "built": time.time(),
             "packages": packages, "mirror": mirror}))
    return build


def _together(calls) -> list:
    results, errors = [], []

    def call(fn):
        try:
            results.append(fn())
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(fn,)) for fn in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors, errors
    return results


def test_two_labs_needing_one_image_at_once_build_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILFLEET_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv("MAILFLEET_LAB_MIRROR", "http://127.0.0.1/debian")
    builds: list[str] = []
    monkeypatch.setattr(images, "_build", _fake_build(builds))
    packages = ["postfix", "dovecot-core"]
    got = _together([lambda: images.ensure_rootfs("trixie", lambda _: None, packages)] * 2)
    assert builds == [got[0].name] and got[0] == got[1]
    assert got[0].name.startswith("trixie-")
    # current now: a third lab finds it without building
    assert images.ensure_rootfs("trixie", lambda _: None, packages) == got[0]
    assert len(builds) == 1


def test_an_image_a_running_lab_boots_from_is_kept_until_no_lab_mounts_it(tmp_path, monkeypatch):
    target = tmp_path / "rootfs" / "trixie"
    (target / "etc").mkdir(parents=True)
    scratch = tmp_path / "rootfs" / "trixie.new"
    mounted = {"yes": True}
    monkeypatch.setattr(images, "in_use", lambda path, mounts=None: mounted["yes"])

    def mmdebstrap(cmd):  # what _prepare expects of a fresh tree
        for path in ("etc/ssh", "root"):
            (scratch / path).mkdir(parents=True)

    monkeypatch.setattr(images, "run", mmdebstrap)
    images._build("trixie", target, [], "http://127.0.0.1/debian", lambda _: None)
    old = list(target.parent.glob("trixie.old*"))
    assert len(old) == 1 and (old[0] / "etc").is_dir(), "the old copy went while in use"
    assert json.loads((target / images.STAMP).read_text())["release"] == "trixie"
    images._sweep(target)
    assert old[0].exists()
    mounted["yes"] = False
    images._sweep(target)
    assert not old[0].exists() and target.is_dir()


def test_in_use_reads_the_overlay_lower_layers_of_proc_mounts():
    mounts = (
        "proc /proc proc rw,nosuid 0 0\n"
        "overlay /var/lib/mailfleet/lab/mfta1/nodes/n1/root overlay rw,relatime,"
        "lowerdir=/var/cache/mailfleet/lab/rootfs/trixie,upperdir=/u,workdir=/w 0 0\n"
        "overlay /x overlay rw,lowerdir=/a:/var/cache/mailfleet/lab/rootfs/bookworm-c3de84620c,"
        "upperdir=/u2,workdir=/w2 0 0\n"
    )
    root = Path("/var/cache/mailfleet/lab/rootfs")
    assert images.in_use(root / "trixie", mounts)
    assert images.in_use(root / "bookworm-c3de84620c", mounts)
    assert not images.in_use(root / "bookworm", mounts)
    assert not images.in_use(root / "trixie-c3de84620c", mounts)


def test_two_labs_missing_machine_tools_install_them_once(tmp_path, monkeypatch):
    installed: list[list[str]] = []
    present = {"yes": False}
    monkeypatch.setattr(system.shutil, "which", lambda tool: present["yes"] and f"/usr/bin/{tool}")

    def install(missing, log):
        installed.append(missing)
        time.sleep(0.3)
        present["yes"] = True

    monkeypatch.setattr(system, "_install_machine_packages", install)
    _together([lambda: system.ensure_machine_tools(tmp_path, lambda _: None)] * 2)
    assert len(installed) == 1 and "wireguard-go" in installed[0]
    assert (tmp_path / ".machine-tools.lock").exists()
