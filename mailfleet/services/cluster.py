"""The accounts database's cluster as a whole: who is primary, who joins, the secrets every
member shares, and the members' state for `cluster status` and `check`.

A deploy asks every member before any operation is added (`prepare`): the host whose
database becomes the cluster's (the primary, else the first member holding a mailfleet
database, else the first member) and the hosts that join it as standbys. A host that holds a
mailfleet database of its own is never wiped to join: the deploy refuses it.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from secrets import token_urlsafe

from pyinfra.facts.server import Command

from mailfleet.accounts import db, schema
from mailfleet.config import Config, HostSettings
from mailfleet.engine import Engine
from mailfleet.engine.context import FLEET_SECRETS
from mailfleet.engine.snapshot import SECRETS_DIR, parse_secrets
from mailfleet.engine.tunnel import ssh_run
from mailfleet.errors import DeployError, UsageError
from mailfleet.services import etcd, replication

# a host that ran Patroni as a member: its data directory is the cluster's (never wiped)
MARKER = "/var/lib/mailfleet/cluster-member"
NAMESPACE = "/mailfleet/"
SCOPE = "accounts"
PATRONI_PORT = db.PATRONI_PORT
CONFIG = "/etc/patroni/config.yml"  # Patroni's (services/patroni.py)
REPLICATION_ROLE = "mailfleet_replication"
# what every member holds alike: the database roles' passwords (the roles live in the
# replicated database), replication's and Patroni's REST API's, the check mailboxes'
SHARED_SECRETS = tuple(dict.fromkeys([
    *(f"postgres-{role}" for role in schema.ROLES), "postgres-mailfleet_roundcube",
    "postgres-mailfleet_sogo", "cluster-replication", "cluster-rest", "check-mailbox", "doveadm"]))
_PSQL = "runuser -u postgres -- psql -X -tA"
# the databases a host holds besides PostgreSQL's own: `mailfleet` first, then the others
_DATABASES = ("SELECT string_agg(datname, ' ' ORDER BY datname <> 'mailfleet', datname) "
              "FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres'")
_SECRET_VALUE = re.compile(r"[A-Za-z0-9_-]{16,200}")
PROBE = "; ".join([
    f"[ -e {MARKER} ] && echo member",
    ". /etc/os-release; echo \"release $VERSION_ID\"",
    f"echo \"recovery $({_PSQL} -c 'SELECT pg_is_in_recovery()' 2>/dev/null)\"",
    "ls -d /var/lib/postgresql/*/main >/dev/null 2>&1 && echo pgdata",
    f"d=$({_PSQL} -c {shlex.quote(_DATABASES)} 2>/dev/null) && echo \"databases $d\"",
    f"{etcd.ETCDCTL} --dial-timeout=1s member list 2>/dev/null | "
    "awk -F', ' '{print \"etcd-member \" ($3 == \"\" ? \"?\" : $3)}'",
    *(f"[ -s {SECRETS_DIR}/{name} ] && echo \"secret {name} $(cat {SECRETS_DIR}/{name})\""
      for name in SHARED_SECRETS),
    "true",
])


@dataclass
class MemberProbe:
    member: bool = False
    release: str = ""
    primary: bool = False
    has_pgdata: bool = False  # a PostgreSQL data directory exists
    # the databases besides PostgreSQL's own (None: PostgreSQL did not answer)
    databases: tuple[str, ...] | None = None
    etcd_members: tuple[str, ...] = ()  # the local etcd's member names, when it answers
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def has_accounts(self) -> bool:
        return schema.DATABASE in (self.databases or ())

    @classmethod
    def parse(cls, text: str) -> MemberProbe:
        probe = cls()
        for line in (text or "").splitlines():
            kind, _, value = line.strip().partition(" ")
            if kind == "member":
                probe.member = True
            elif kind == "release":
                probe.release = value.split(".")[0]
            elif kind == "recovery":
                probe.primary = value.strip() == "f"
            elif kind == "pgdata":
                probe.has_pgdata = True
            elif kind == "databases":
                probe.databases = tuple(value.split())
            elif kind == "etcd-member" and value.strip():
                probe.etcd_members += (value.strip(),)
            elif kind == "secret":
                # a value must look like one mailfleet makes (it goes into psql's \set
                # and Patroni's YAML): anything else is left out and made again
                probe.secrets.update({k: v for k, v in parse_secrets(value).items()
                                      if _SECRET_VALUE.fullmatch(v)})
        return probe


@dataclass(frozen=True)
class ClusterState:
    """What a deploy found: the host whose database is the cluster's (`source`: the primary,
    or the one that becomes it), the hosts that join it now, and the members already in."""

    source: str
    joining: tuple[str, ...]
    members: tuple[str, ...]

    def bootstraps(self, host: str) -> bool:
        """This host's database becomes the cluster's now (no member yet)."""
        return not self.members and host == self.source

    def writes_here(self, host: str) -> bool:
        """The database changes of a deploy (roles, migrations, domains) run on this host."""
        return host == self.source


def decide(names: list[str], probes: dict[str, MemberProbe]) -> ClusterState:
    """The source and the joining hosts, or one sentence why the cluster cannot be formed."""
    releases = {name: probes[name].release for name in names if probes[name].release}
    if len(set(releases.values())) > 1:
        listed = ", ".join(f"{n} Debian {r}" for n, r in releases.items())
        raise DeployError(f"The cluster's hosts run different Debian releases ({listed}): "
                          "streaming replication needs the same PostgreSQL major version on "
                          "every member.", hint="Give the cluster hosts of one release.")
    members = tuple(n for n in names if probes[n].member)
    primaries = [n for n in members if probes[n].primary]
    for name in names:  # (a member not started yet has no name: "?")
        known = probes[name].etcd_members if probes[name].member else ()
        if known and "?" not in known and sorted(known) != sorted(names):
            raise DeployError(
                f"The cluster's members are {', '.join(sorted(known))} (etcd on {name}), and "
                f"the config names {', '.join(names)}: adding, removing or renaming a member "
                "is not automated yet.", hint="See docs/cluster.md, \"Replacing a dead host\".")
    if members:
        if len(primaries) != 1:
            raise DeployError(
                f"The cluster has {'no primary' if not primaries else 'two primaries'} now "
                f"({', '.join(primaries) or 'members: ' + ', '.join(members)}): a failover may "
                "be under way.", hint="Run `mailfleet cluster status`, then deploy again.")
        source = primaries[0]
    else:
        for name in names:
            if probes[name].has_pgdata and probes[name].databases is None:
                raise DeployError(
                    f"PostgreSQL on {name} does not answer, so whether it holds data cannot be "
                    "told: the cluster is formed from one host's database and the others' are "
                    "replaced.", hint=f"Start PostgreSQL on {name}, then deploy again.")
        holding = [n for n in names if probes[n].has_accounts]
        source = holding[0] if holding else names[0]
    joining = tuple(n for n in names if not probes[n].member and n != source)
    for name in joining:
        held = probes[name].databases
        if held is None and probes[name].has_pgdata:
            raise DeployError(
                f"PostgreSQL on {name} does not answer, so whether it holds data cannot be "
                f"told: joining would replace its data with a copy of {source}'s.",
                hint=f"Start PostgreSQL on {name}, then deploy again.")
        if held:
            raise DeployError(
                f"{name} holds databases of its own ({', '.join(held)}), and the cluster's "
                f"is {source}'s: joining would replace them with a copy of {source}'s.",
                hint=f"Move its accounts to {source} (`mailfleet user import`) and drop its "
                     "databases, then deploy again.")
    return ClusterState(source, joining, members)


def shared_secrets(state: ClusterState, probes: dict[str, MemberProbe]) -> dict[str, str]:
    """Each shared secret's value: the source's, else a member's, else a new one."""
    order = [state.source, *state.members, *probes]
    values = {}
    for name in SHARED_SECRETS:
        values[name] = next((probes[h].secrets[name] for h in order
                             if h in probes and name in probes[h].secrets), token_urlsafe(24))
    return values


def read_on(engine: Engine, members: list[HostSettings], command: str) -> dict[str, str | None]:
    """One shell read on every member: those of this deploy through the engine (None for
    a failed or silent read), the others over SSH."""
    texts = engine.facts(Command, hosts=[m.name for m in members if m.name in engine.settings],
                         command=command)
    for member in members:
        if member.name not in engine.settings:
            texts[member.name] = ssh_run(member, command)
    return texts


def probe_all(engine: Engine, members: list[HostSettings]) -> dict[str, MemberProbe]:
    """Every member's probe."""
    return {name: MemberProbe.parse(text)
            for name, text in read_on(engine, members, PROBE).items()}


def prepare(engine: Engine, config: Config) -> ClusterState | None:
    """Decide the cluster's source and joiners and its shared secrets, before any operation
    of this deploy is added (engine.shared); None when this deploy has no member."""
    members = config.cluster_members()
    if not any(m.name in engine.settings for m in members):
        return None
    probes = probe_all(engine, members)
    # a new cluster starts from a mail host's database (its deploy writes the health-check
    # mailbox and the domains there), else from the first member's; one with the web role
    # first, since only the web member that writes loads Roundcube's tables (roundcube.py)
    ordered = sorted(members, key=lambda m: ("mail" not in m.roles, "web" not in m.roles))
    state = decide([m.name for m in ordered], probes)
    engine.shared["cluster"] = state
    engine.shared[FLEET_SECRETS] = shared_secrets(state, probes)
    return state


# -- the members' state (cluster status, check, the deploy's end) ------------------------

def status_command(address: str, host: str = "") -> str:
    """One member's view: Patroni's own state (its REST API), on the primary each
    standby's replication (bytes and seconds behind), the mailboxes homed on `host` and how
    far behind their replicas are."""
    url = f"http://{address}:{PATRONI_PORT}/patroni"
    fetch = ("import json, urllib.request; "
             f"print(json.dumps(json.load(urllib.request.urlopen({url!r}, timeout=5))))")
    streaming = ("SELECT application_name, state, "
                 "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), -1), "
                 "coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication "
                 "WHERE NOT pg_is_in_recovery()")
    homed = ("SELECT count(*) FROM mailboxes WHERE NOT system AND home = "
             f"{schema.sql_literal(host)}")
    pairs = ("SELECT home, replica, count(*) FROM mailboxes WHERE NOT system AND home IS NOT NULL "
             "GROUP BY home, replica")
    return "; ".join([
        f"echo \"patroni $(python3 -c {shlex.quote(fetch)} 2>/dev/null)\"",
        f"{_PSQL} -F ' ' -c {shlex.quote(streaming)} 2>/dev/null | sed 's/^/standby /'",
        f"echo \"etcd $({etcd.ETCDCTL} endpoint health 2>&1 | head -n 1)\"",
        f"echo \"homed $({_PSQL} -d {schema.DATABASE} -c {shlex.quote(homed)} 2>/dev/null)\"",
        f"{{ {replication.STATUS}; }} | sed 's/^/copies /'",
        f"{_PSQL} -d {schema.DATABASE} -F ' ' -c {shlex.quote(pairs)} 2>/dev/null "
        "| sed 's/^/pair /'",
        "true",
    ])


@dataclass
class MemberStatus:
    host: str
    reachable: bool = True
    error: str = ""
    role: str = ""  # primary, standby, or what Patroni says
    state: str = ""
    timeline: int | None = None
    etcd_healthy: bool = False
    # on the primary: {standby: (replication state, bytes behind, seconds behind)}
    standbys: dict[str, tuple[str, int, float]] = field(default_factory=dict)
    homed: int | None = None  # mailboxes whose home it is (None: not known)
    # a mail host among several: {replica's VPN address: seconds behind}, and the seconds
    # since its last replication pass (None: none on record)
    replicas: dict[str, int] = field(default_factory=dict)
    last_pass: int | None = None
    # its copy of the database: {(home, replica or ""): mailboxes}
    pairs: dict[tuple[str, str], int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"host": self.host, "reachable": self.reachable, "error": self.error,
                "role": self.role, "state": self.state, "timeline": self.timeline,
                "etcd_healthy": self.etcd_healthy, "mailboxes_homed": self.homed,
                "replicas_behind": self.replicas, "replication_pass_age": self.last_pass,
                "standbys": {name: {"state": s, "lag_bytes": b, "lag_seconds": t}
                             for name, (s, b, t) in self.standbys.items()}}


def parse_status(host: str, text: str) -> MemberStatus:
    status = MemberStatus(host)
    copies = "\n".join(line[7:] for line in text.splitlines() if line.startswith("copies "))
    last, now, status.replicas = replication.parse_status(copies)
    status.last_pass = now - last if last and now else None
    for line in text.splitlines():
        kind, _, value = line.partition(" ")
        if kind == "patroni" and value.strip():
            try:
                found = json.loads(value)
            except ValueError:
                continue
            role = found.get("role", "")
            status.role = {"master": "primary", "replica": "standby"}.get(role, role)
            status.state = found.get("state", "")
            status.timeline = found.get("timeline")
        elif kind == "standby":
            parts = value.split()
            if len(parts) == 4:
                status.standbys[parts[0]] = (parts[1], int(float(parts[2])), float(parts[3]))
        elif kind == "etcd":
            status.etcd_healthy = " is healthy" in value
        elif kind == "homed" and value.strip().isdigit():
            status.homed = int(value.strip())
        elif kind == "pair":
            parts = value.split()
            if len(parts) in (2, 3) and parts[-1].isdigit():
                status.pairs[(parts[0], parts[1] if len(parts) == 3 else "")] = int(parts[-1])
    if not status.role:
        status.role, status.state = "unknown", status.state or "Patroni does not answer"
    return status


def member_status(config: Config, timeout: float = 20) -> list[MemberStatus]:
    """Every member's state, asked over SSH in parallel; a host that does not answer is
    reported as such (a stopped host is what this is for)."""
    members = config.cluster_members()
    addresses = {m.name: config.vpn_address(m) for m in members}

    def one(member: HostSettings) -> MemberStatus:
        try:
            text = ssh_run(member, status_command(addresses[member.name], member.name),
                           timeout=timeout)
        except DeployError as err:
            return MemberStatus(member.name, reachable=False, error=err.message,
                                role="unreachable")
        status = parse_status(member.name, text)
        names = {address: name for name, address in addresses.items()}
        status.replicas = {names.get(a, a): s for a, s in status.replicas.items()}
        return status

    with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
        return list(pool.map(one, members))


def problems(statuses: list[MemberStatus], max_lag_bytes: int) -> list[str]:
    """What keeps the cluster from being whole: each as one sentence (empty: healthy).
    etcd needs its quorum (`check` warns of a member that does not answer)."""
    found = []
    primaries = [s for s in statuses if s.role == "primary"]
    if len(primaries) != 1:
        found.append(f"{len(primaries)} primaries ({', '.join(s.host for s in primaries) or 'none'})")
    streaming = primaries[0].standbys if len(primaries) == 1 else {}
    for s in statuses:
        if s.role == "primary":
            continue
        if not s.reachable:
            found.append(f"{s.host} does not answer")
            continue
        seen = streaming.get(s.host)
        if seen is None or seen[0] != "streaming":
            found.append(f"{s.host} is not streaming from the primary ({s.role}, {s.state})")
        elif seen[1] > max_lag_bytes:
            found.append(f"{s.host} is {seen[1]} bytes behind")
    healthy = sum(s.etcd_healthy for s in statuses)
    if healthy <= len(statuses) // 2:
        found.append(f"etcd has no quorum ({healthy} of {len(statuses)} members healthy)")
    # mailboxes no mail host can serve: their home and their replica both down
    down = {s.host for s in statuses if not s.reachable}
    pairs = next((s.pairs for s in statuses if s.role == "primary"), None) or \
        next((s.pairs for s in statuses if s.pairs), {})
    for (home, replica), count in sorted(pairs.items()):
        if home in down and (replica in down or not replica):
            found.append(f"{count} mailbox(es) homed on {home} are unavailable: "
                         + (f"their replica {replica} is down too" if replica
                            else "they have no replica"))
    return found


def settle(config: Config, timeout: float = 300) -> list[MemberStatus]:
    """Wait until the cluster is whole (the deploy's end: standbys may still be copying
    the primary); raises DeployError with what is missing when it is not within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = member_status(config)
        missing = problems(statuses, config.cluster.max_lag_bytes)
        if not missing:
            return statuses
        if time.monotonic() > deadline:
            raise DeployError(f"The accounts database's cluster is not whole after "
                              f"{timeout:.0f} s: {'; '.join(missing)}.",
                              hint="Run `mailfleet cluster status`; see `journalctl -u "
                                   "patroni` on the members.")
        time.sleep(2)


def switchover(config: Config, to: str, timeout: float = 60) -> tuple[str, float]:
    """Make member `to` the primary, planned (Patroni's switchover: the primary stops
    taking writes, `to` takes over once it replayed everything): (the primary before,
    seconds it took)."""
    members = {m.name: m for m in config.cluster_members()}
    if to not in members:
        raise UsageError(f"--to {to}: not a member of the cluster ({', '.join(members)}).")
    statuses = {s.host: s for s in member_status(config)}
    primary = next((name for name, s in statuses.items() if s.role == "primary"), None)
    if primary is None:
        raise DeployError("The cluster has no primary now: nothing to switch over.",
                          hint="Run `mailfleet cluster status`.")
    if primary == to:
        return primary, 0.0
    if statuses[to].role != "standby" or statuses[to].state not in ("running", "streaming"):
        raise DeployError(f"{to} is not a running standby ({statuses[to].role}, "
                          f"{statuses[to].state or statuses[to].error}).")
    command = (f"patronictl -c {CONFIG} switchover --leader {shlex.quote(primary)} "
               f"--candidate {shlex.quote(to)} --force")
    started = time.monotonic()
    ssh_run(members[to], command, timeout=timeout + 30)
    while time.monotonic() < started + timeout:
        # done once `to` leads and the old primary streams from it again (a write made
        # next is then replayed on every member before the command that made it returns)
        now = {s.host: s for s in member_status(config)}
        streaming = now[to].standbys.get(primary, ("",))[0] == "streaming"
        if now[to].role == "primary" and streaming:
            return primary, time.monotonic() - started
        time.sleep(1)
    raise DeployError(f"{to} did not become the primary within {timeout:.0f} s.",
                      hint="Run `mailfleet cluster status`; see `journalctl -u patroni`.")
