"""Lab tests: real Debian hosts booted with systemd-nspawn, driven through the real CLI.

They need root. Without it they fail (loudly), they never skip: a lab test that did not
run has proven nothing.

Labs: the two-release lab (`two_release_lab`, Debian 12 n1 + Debian 13 n2) is booted once per
session (per pytest-xdist worker: each worker has its own, under its own lab names) and shared
by every module of that session that uses it; each of those modules starts with its own
deploy (`deployed`). Modules that need other hosts boot a lab of their own (test_dns_mail,
test_vpn, test_readme_lab, test_demo, parts of test_lab_deploy and test_mail_backup).
Modules pass in any order: a module that changes the shared lab's mailfleet.toml does it
through `lab_settings` (for the module) or `edited_config` (for a test), and the file goes
back when it ends; no test module imports another (shared helpers live here and in
webmail.py).
"""

from __future__ import annotations

import ctypes
import imaplib
import json
import os
import subprocess
import smtplib
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomlkit

from mailfleet.engine import mailclient
from mailfleet.lab.inventory import ssh_user
from mailfleet.lab.lab import Lab
from mailfleet.services import opendkim

pytestmark = pytest.mark.lab

# Lab names used by the tests: mft1, mft2, ... (another prefix lets a second run go on beside).
# Under pytest-xdist each worker adds a letter of its own (gw0: mfta1, ..., gw1: mftb1, ...):
# every worker boots its own labs (its own shared two-release lab too), and no two workers,
# nor a serial run beside them, ever use the same lab name, namespace, state directory or port.
LAB_NUMBERS = 13  # lab_name(1) .. lab_name(LAB_NUMBERS); test_demo's lab is lab_name("demo")


def worker_prefix(base: str, worker: str | None) -> str:
    """The lab-name prefix of one pytest process: `base`, plus a letter per xdist worker."""
    if not worker:
        return base
    if not worker.startswith("gw") or not worker[2:].isdigit() or int(worker[2:]) >= 26:
        raise ValueError(f"unexpected xdist worker id {worker!r} (gw0 .. gw25 get a letter each)")
    return base + "abcdefghijklmnopqrstuvwxyz"[int(worker[2:])]


def check_prefix(prefix: str) -> str:
    """`prefix` if every lab name the tests make from it is a valid lab id (1-8 letters or
    digits): prefix + "10" is the longest; "demo" is cut to 8 characters (the worker's letter
    stays in, so two workers' demo labs still differ)."""
    from mailfleet.lab.paths import LAB_ID_RE

    if not prefix or not LAB_ID_RE.fullmatch(f"{prefix}{LAB_NUMBERS}"):
        raise ValueError(
            f"lab-name prefix {prefix!r} (MAILFLEET_TEST_LABS, plus one letter per xdist worker) "
            f"is not usable: the tests' lab names ({prefix}1 .. {prefix}{LAB_NUMBERS}) must be "
            "1-8 lower case letters or digits: a prefix of 1-6 characters, 1-5 under xdist")
    return prefix


LAB_PREFIX = check_prefix(worker_prefix(os.environ.get("MAILFLEET_TEST_LABS", "mft"),
                                        os.environ.get("PYTEST_XDIST_WORKER")))


def lab_name(number: int | str) -> str:
    """This process's lab name `number` (1 .. LAB_NUMBERS, or "demo")."""
    if isinstance(number, int) and not 1 <= number <= LAB_NUMBERS:
        raise ValueError(f"lab numbers go from 1 to {LAB_NUMBERS} (raise LAB_NUMBERS)")
    return f"{LAB_PREFIX}{number}"[:8]


# -- the order of the modules -----------------------------------------------------------

# The lab modules in the order they start, with the seconds each took (start to end, fixtures
# included) in a full parallel run from a clean clone (2-core machine, image cache warm;
# ci38, 2026-12-06, read from the module timeline bin/test prints at the end; the order is
# ci36's, which ci38 ended with the two workers 7 s apart). Under pytest-xdist
# (bin/test: `-n 2 --dist loadfile --no-loadscope-reorder`) each worker runs whole modules
# and is sent its next one when two tests of its current one are left. So: test_lab_deploy
# first (its bare deploy is its worker's shared lab's first deploy), then the longest first,
# but the modules of one long test before the tail (piled up by that look-ahead they would
# leave one worker minutes behind): the run ends on modules of many short tests, then the
# unit tests. A lab module missing here starts after these (test_lab_names checks that none
# is missing).
MODULE_SECONDS = {
    "test_lab_deploy.py": 335,
    "test_mail_accounts.py": 685,
    "test_cluster.py": 560,  # four nodes, three mail hosts, a move, failover, take-over, restore
    "test_mail_node.py": 358,
    "test_mail_backup.py": 278,
    "test_split_tiers.py": 297,
    "test_cluster_growth.py": 277,  # one deploy alone, one as a cluster, SOGo (Debian 12)
    "test_vpn.py": 313,
    "test_radicale.py": 133,
    "test_dns_mail.py": 271,
    "test_webmail_switch.py": 96,  # one test
    "test_demo.py": 105,  # one test
    "test_readme_lab.py": 79,  # one test
    "test_webmail.py": 129,
    "test_node_hardening.py": 228,
    "test_webmail_sogo.py": 168,
    "test_provision.py": 86,  # two cloud-init nodes, a deploy, destroy
    "test_engine_helpers.py": 16,
    "test_lab_names.py": 0,
}
LAB_DIR = Path(__file__).parent
_POSITION = {name: i for i, name in enumerate(MODULE_SECONDS)}


def module_order_key(path: Path) -> int:
    """Sort key of a test module: the lab modules in MODULE_SECONDS's order, then any other
    lab module, then everything else (the unit tests: many short modules, which fill the end
    of a parallel run)."""
    if path.parent != LAB_DIR:
        return len(_POSITION) + 1
    return _POSITION.get(path.name, len(_POSITION))


@pytest.hookimpl(trylast=True)  # after pytest's own reordering for module-scoped fixtures
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: module_order_key(item.path))  # stable: each module keeps its order


@dataclass
class Cli:
    """`mailfleet` as a user runs it, bound to one lab name and one config file."""

    lab: str
    config: Path

    def __call__(self, *args: str, check: bool = True, timeout: float = 900,
                 input: str | None = None) -> subprocess.CompletedProcess:
        """Run it; `input` is its standard input (none at all otherwise, as in CI)."""
        env = {**os.environ, "MAILFLEET_LAB": self.lab, "MAILFLEET_CONFIG": str(self.config)}
        result = subprocess.run(
            [sys.executable, "-m", "mailfleet", *args], capture_output=True, text=True, env=env,
            timeout=timeout, **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"mailfleet {' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "--json").stdout)

    def ssh(self, node: str, command: str) -> str:
        """COMMAND as root on NODE: what `mailfleet lab ssh NODE -- COMMAND` runs (the same
        login, user and sudo), without starting the CLI for it, which cost a second a call,
        hundreds of calls a run. test_dns_mail runs `lab ssh` itself."""
        lab = Lab(self.lab)
        cmd = lab.ssh_command(node, [command], ssh_user(self.config, lab.paths.id, node))
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=900)
        if result.returncode != 0:
            raise AssertionError(f"mailfleet lab ssh {node} -- {command} exited "
                                 f"{result.returncode}\nstdout:\n{result.stdout}\n"
                                 f"stderr:\n{result.stderr}")
        return result.stdout.strip()

    def account(self, node: str, *args: str) -> None:
        """Create an account through mailfleet's database layer (see accounts_helper.py)."""
        result = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("accounts_helper.py")),
             str(self.config), node, *args],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        )
        assert result.returncode == 0, result.stderr


class LabNet:
    """Runs client code inside the lab's own network (its bridge namespace), as a machine
    on the Internet would reach the hosts: worker threads that entered the namespace with
    setns(2), which changes only the calling thread. Several, so a client running in the
    background (a stream of mail) does not hold up the test's own clients."""

    CLONE_NEWNET = 0x40000000

    def __init__(self, lab: str, namespace: str | None = None) -> None:
        from mailfleet.lab.paths import LabPaths

        path = f"/run/netns/{namespace or LabPaths(lab).bridge_ns}"
        self._pool = ThreadPoolExecutor(4, initializer=self._enter, initargs=(path,))

    @classmethod
    def _enter(cls, path: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.setns(fd, cls.CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({path})")
        finally:
            os.close(fd)

    def run(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown()


def lab_leftovers(lab: str) -> dict[str, list[str]]:
    """Everything a lab named `lab` could leave behind: namespaces, processes, mounts."""
    from mailfleet.lab.paths import LabPaths
    from mailfleet.lab.system import cmdline, pids_mentioning

    paths = LabPaths(lab)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    marker = str(paths.state_dir) + "/"
    return {
        "namespaces": [l.split()[0] for l in namespaces.splitlines()
                       if l.startswith(paths.netns_prefix)],
        "processes": [f"{pid}: {cmdline(pid)}" for pid in pids_mentioning(marker)],
        "mounts": [l for l in Path("/proc/mounts").read_text().splitlines() if marker in l],
    }


@contextmanager
def booted_lab(cli: Cli, *up: str) -> Iterator[Cli]:
    """`mailfleet lab up UP...` under `cli`'s lab name; always torn down, leaving nothing."""
    try:
        cli("lab", "up", *up, timeout=600)
        yield cli
    finally:
        down = cli("lab", "down", check=False)
    assert down.returncode == 0, down.stderr
    assert lab_leftovers(cli.lab) == {"namespaces": [], "processes": [], "mounts": []}


def lab_bytes(cli: Cli, node: str, command: str, data: bytes | None = None) -> bytes:
    """`mailfleet lab ssh NODE -- COMMAND` with bytes in and out (a repository as a tar)."""
    env = {"MAILFLEET_LAB": cli.lab, "MAILFLEET_CONFIG": str(cli.config)}
    done = subprocess.run([sys.executable, "-m", "mailfleet", "lab", "ssh", node, "--", command],
                          input=data, capture_output=True, env={**os.environ, **env},
                          timeout=600, **({} if data is not None else {"stdin": subprocess.DEVNULL}))
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def booted_two_release_lab(cli: Cli):
    """Debian 12 (n1) and Debian 13 (n2) booted bare under `cli`'s lab name; always torn down."""
    return booted_lab(cli, "--release", "bookworm", "--release", "trixie")


@pytest.fixture(scope="session")
def two_release_lab(tmp_path_factory):
    """One Debian 12 node (n1) and one Debian 13 node (n2), booted once per session and
    shared by every module that asks for it (directly or through `deployed`). Booted bare
    when the module that asks first deploys onto bare Debian (test_lab_deploy, first in the
    order); else from the preinstalled image, so that the first deploy of a worker that never
    runs that module does not install the packages again (minutes of dpkg)."""
    _SHARED_LAB["preinstalled"] = not _SHARED_LAB["bare"]
    cli = Cli(lab_name(1), tmp_path_factory.mktemp("lab") / "mailfleet.toml")
    up = booted_lab(cli, "--release", "bookworm", "--release", "trixie",
                    *(["--preinstall"] if _SHARED_LAB["preinstalled"] else []))
    with up:
        yield cli


# Has any module deployed the shared lab yet (a bare lab cannot be had back afterwards)? Was
# it wanted bare, and was it booted preinstalled?
_SHARED_LAB = {"deployed": False, "bare": False, "preinstalled": False}


@pytest.fixture(scope="module")
def bare_two_release_lab(request, tmp_path_factory):
    """The two-release lab before anything was deployed to it, for a module that deploys
    a fresh VPS itself. The shared lab while no module has deployed it (the usual order: no
    second boot); otherwise one of this module's own, so the module passes in any order."""
    if not _SHARED_LAB["deployed"] and not _SHARED_LAB["preinstalled"]:
        _SHARED_LAB["deployed"] = True  # this module deploys it: it is bare no longer
        _SHARED_LAB["bare"] = True  # (and if it is booted now, booted bare)
        yield request.getfixturevalue("two_release_lab")
        return
    own = Cli(lab_name(9), tmp_path_factory.mktemp("bare-lab") / "mailfleet.toml")
    with booted_two_release_lab(own) as cli:
        yield cli


# -- the deployed two-release lab, shared by the mail node and accounts tests ------------

NODES = {"n1": ("10.77.0.11", "2.3"), "n2": ("10.77.0.12", "2.4")}
DOMAIN = "example.internal"
PASSWORD = "Correct-Horse-7-battery"


@dataclass
class Node:
    cli: Cli
    net: LabNet
    name: str
    address: str
    dovecot: str
    ca: str
    dkim_record: str

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{DOMAIN}"

    def context(self):
        return mailclient.tls_context(self.ca)

    def user(self, local: str, quota: int | None = None) -> str:
        address = f"{local}-{self.name}@{DOMAIN}"
        self.cli.account(self.name, "mailbox", address, PASSWORD, *([str(quota)] if quota else []))
        return address

    def submit(self, sender: str, recipient: str, port: int = 587, login: str | None = None,
               subject: str | None = None, body: str | None = None,
               password: str = PASSWORD) -> str:
        subject = subject or f"test {uuid.uuid4().hex[:10]}"
        message = mailclient.check_message(sender, recipient, subject, subject=subject)
        if body:
            message.set_content(body)
        self.net.run(mailclient.submit, self.address, port, self.fqdn, self.context(),
                     login or sender, password, message, implicit_tls=port == 465)
        return subject

    def fetch(self, user: str, subject: str, wait: float = 30,
              password: str = PASSWORD, mailbox: str = "INBOX") -> bytes | None:
        return self.net.run(mailclient.fetch, self.address, 993, self.fqdn, self.context(), user,
                            password, subject, delete=False, wait=wait, mailbox=mailbox)

    def create_folder(self, user: str, folder: str, password: str = PASSWORD) -> None:
        def create() -> None:
            imap = mailclient.IMAP4SSLTo(self.address, 993, self.fqdn, self.context())
            try:
                imap.login(user, password)
                assert imap.create(f'"{folder}"')[0] == "OK"
                imap.subscribe(f'"{folder}"')
            finally:
                imap.logout()

        self.net.run(create)

    def imap_login(self, user: str, password: str) -> bool:
        """Does Dovecot accept this login on 993?"""
        def attempt() -> bool:
            imap = mailclient.IMAP4SSLTo(self.address, 993, self.fqdn, self.context())
            try:
                imap.login(user, password)
                return True
            except imaplib.IMAP4.error:
                return False
            finally:
                imap.shutdown()

        return self.net.run(attempt)

    def rcpt25(self, recipient: str) -> tuple[int, bytes]:
        """What port 25 answers a stranger for this recipient."""
        smtp = self.smtp25()
        try:
            self.run(smtp.mail, "someone@outside.test")
            return self.run(smtp.rcpt, recipient)
        finally:
            self.run(smtp.quit)

    def smtp25(self) -> smtplib.SMTP:
        return self.net.run(self._plain_smtp, 25)

    def _plain_smtp(self, port: int) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.address, port, timeout=20)
        smtp.ehlo("client.outside.test")
        return smtp

    def run(self, fn, *args):
        return self.net.run(fn, *args)


@pytest.fixture(scope="module")
def deployed(two_release_lab: Cli) -> Iterator[Cli]:
    """The shared lab deployed from its mailfleet.toml as it stands. Every module that asks
    for it starts with this deploy, which also puts back on the hosts whatever an earlier
    module changed; and the file goes back to this text when the module ends, whatever the
    module (or a CLI command it ran, such as `domain add`) wrote into it."""
    _SHARED_LAB["deployed"] = True
    report = two_release_lab.json("deploy")
    assert report["ok"], report
    as_deployed = two_release_lab.config.read_text()
    yield two_release_lab
    two_release_lab.config.write_text(as_deployed)


@contextmanager
def edited_config(cli: Cli, edit: Callable[[tomlkit.TOMLDocument], None]) -> Iterator[Cli]:
    """mailfleet.toml changed by `edit` inside the with block and put back byte for byte
    after it (even when the block failed); the hosts are not touched."""
    original = cli.config.read_text()
    doc = tomlkit.parse(original)
    edit(doc)
    cli.config.write_text(tomlkit.dumps(doc))
    try:
        yield cli
    finally:
        cli.config.write_text(original)


@dataclass
class LabSettings:
    """Settings of the shared lab's mailfleet.toml that one module runs with (see
    `lab_settings`)."""

    cli: Cli
    original: str = field(init=False)

    def __post_init__(self) -> None:
        self.original = self.cli.config.read_text()

    def set(self, features: dict[str, object] | None = None,
            edit: Callable[[tomlkit.TOMLDocument], None] | None = None,
            deploy: bool = True) -> dict:
        """Set [features] keys (and whatever `edit` changes), then deploy; the report."""
        doc = tomlkit.parse(self.cli.config.read_text())
        for key, value in (features or {}).items():
            doc["features"][key] = value
        if edit:
            edit(doc)
        self.cli.config.write_text(tomlkit.dumps(doc))
        if not deploy:
            return {}
        report = self.cli.json("deploy")
        assert report["ok"], report
        return report

    def restore(self) -> None:
        self.cli.config.write_text(self.original)


@pytest.fixture(scope="module")
def lab_settings(deployed: Cli) -> Iterator[LabSettings]:
    """Changes the shared lab's settings for one module and takes them back when it ends:
    the file at once; the hosts at the start of the next module that uses the lab, whose
    `deployed` deploys the restored file (that deploy runs anyway, so taking the hosts back
    costs no deploy of its own). Modules that read host state without `deployed` do not
    depend on features (test_engine_helpers) or get a lab of their own
    (`bare_two_release_lab`)."""
    settings = LabSettings(deployed)
    try:
        yield settings
    finally:
        settings.restore()


@pytest.fixture(scope="module")
def lab_net(deployed: Cli):
    net = LabNet(deployed.lab)
    yield net
    net.close()


@pytest.fixture(scope="module", params=list(NODES), ids=[f"{n}-dovecot{v}" for n, (_, v) in NODES.items()])
def node(request, deployed: Cli, lab_net: LabNet) -> Node:
    return shared_node(deployed, lab_net, request.param)


def shared_node(deployed: Cli, lab_net: LabNet, name: str) -> Node:
    """One node of the deployed two-release lab, with its CA and DKIM record read."""
    address, dovecot = NODES[name]
    ca = deployed.ssh(name, "cat /etc/mailfleet/tls/ca.crt")
    record = opendkim.public_key_record(deployed.ssh(name, f"cat /etc/dkimkeys/{DOMAIN}/mail.txt"))
    assert record and record.startswith("v=DKIM1")
    assert deployed.ssh(name, "dovecot --version").startswith(dovecot)
    return Node(deployed, lab_net, name, address, dovecot, ca, record)


# -- shared test data --------------------------------------------------------------------

# a one-event calendar, as a CalDAV client sends it (Radicale's and SOGo's tests)
EVENT = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//mailfleet tests//EN
BEGIN:VEVENT
UID:{uid}
DTSTAMP:20261126T080000Z
DTSTART:20261201T090000Z
DTEND:20261201T100000Z
SUMMARY:{summary}
END:VEVENT
END:VCALENDAR
"""


# -- logging in to lab nodes the way an outsider would ------------------------------------

def password_login(cli: Cli, node: str, user: str, password: str) -> bool:
    """Does sshd accept this user with this password? (paramiko, no keys, no agent)"""
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        port = Lab(cli.lab).node(node).ssh_port
        client.connect("127.0.0.1", port, username=user, password=password,
                       look_for_keys=False, allow_agent=False, timeout=15, auth_timeout=15)
        return True
    except (paramiko.AuthenticationException, paramiko.SSHException):
        return False
    finally:
        client.close()


def key_login(cli: Cli, node: str, user: str, command: str = "true") -> subprocess.CompletedProcess:
    """ssh USER@node with the lab's key, as the operator would (COMMAND as it is, no sudo)."""
    return subprocess.run([*Lab(cli.lab).ssh_login(node, user), "--", command],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
