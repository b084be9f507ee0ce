"""Memory of the whole stack on one lab host with each webmail choice, measured in one run:
Roundcube (nginx + PHP-FPM) against SOGo (nginx + sogod workers + memcached), each right
after a user's login, and the ratio SOGo / Roundcube.

Boots one Debian lab host, deploys with webmail = "roundcube", logs a user in over HTTPS
(which starts the PHP-FPM pool on demand), then reads every process's RSS and PSS
(/proc/PID/smaps_rollup) and sums them per systemd unit; then switches the config to "sogo",
deploys, logs in again and measures again. PSS divides each shared page among the processes
that map it, so its sum is what the host really spends; the RSS sum counts shared pages
(PHP's, PostgreSQL's shared buffers) once per process.

Run as root: .venv/bin/python benchmarks/webmail_memory.py [--release bookworm]
"""

from __future__ import annotations

import argparse
import base64
import json
import re

import tomlkit
from _common import Mailfleet

USER, PASSWORD = "reader@example.internal", "Quiet-river-2026-k"
# systemd units (without .service) of each webmail tier
WEB = {"roundcube": ("nginx", "php8.2-fpm", "php8.4-fpm"),
       "sogo": ("nginx", "sogo", "memcached")}
MAIL = ("postgresql@15-main", "postgresql@17-main", "postfix", "postfix@-", "dovecot", "opendkim",
        "opendmarc")
# RSS and PSS (kB) of every process, by the systemd unit whose cgroup holds it
MEMORY = r"""
import json, os, re
units = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cgroup = open(f"/proc/{pid}/cgroup").read()
        rollup = open(f"/proc/{pid}/smaps_rollup").read()
    except OSError:  # ended meanwhile, or a kernel thread
        continue
    names = re.findall(r"/([^/\n]+\.(?:service|scope))$", cgroup, re.M)
    unit = names[-1].removesuffix(".service") if names else "other"
    sizes = dict(re.findall(r"^(Rss|Pss):\s+(\d+) kB", rollup, re.M))
    if sizes:
        rss, pss = units.get(unit, (0, 0))
        units[unit] = (rss + int(sizes["Rss"]), pss + int(sizes["Pss"]))
print(json.dumps(units))
"""


def memory(mailfleet: Mailfleet) -> dict[str, tuple[float, float]]:
    """(RSS MB, PSS MB) per systemd unit on the host, every process counted."""
    script = base64.b64encode(MEMORY.encode()).decode()  # (no shell quoting to get wrong)
    _, text = mailfleet.ssh("n1", f"echo {script} | base64 -d | python3 -")
    return {unit: (rss / 1024, pss / 1024) for unit, (rss, pss) in json.loads(text).items()}


def tier(units: dict[str, tuple[float, float]], names: tuple[str, ...]) -> tuple[float, float]:
    """(RSS, PSS) summed over the units named."""
    chosen = [units[n] for n in names if n in units]
    return sum(r for r, _ in chosen), sum(p for _, p in chosen)


def log_in(mailfleet: Mailfleet, webmail: str) -> None:
    """One login as a browser does it, on the host itself."""
    site = 'curl -sk -c "$c" -b "$c" --resolve "$n:443:127.0.0.1" '
    if webmail == "roundcube":
        # the login form's token first, then the POST
        command = ('n=$(hostname -f); c=$(mktemp); ' + site + '"https://$n/" -o /tmp/login.html; '
                   "t=$(grep -o 'name=\"_token\" value=\"[^\"]*' /tmp/login.html | cut -d'\"' -f4); "
                   + site + f'-o /dev/null -w "%{{http_code}}" -d "_task=login&_action=login&_token=$t'
                   f'&_user={USER}&_pass={PASSWORD}" "https://$n/?_task=login"')
    else:
        command = ('n=$(hostname -f); c=$(mktemp); ' + site + f"-o /dev/null -w '%{{http_code}}' -H 'Content-Type: application/json' "
                   f"-d '{{\"userName\":\"{USER}\",\"password\":\"{PASSWORD}\"}}' "
                   '"https://$n/SOGo/connect"')
    _, code = mailfleet.ssh("n1", command)
    if not re.fullmatch(r"(200|302)", code):
        raise SystemExit(f"{webmail} login answered {code!r}")


def set_webmail(mailfleet: Mailfleet, webmail: str) -> None:
    doc = tomlkit.parse(mailfleet.config.read_text())
    doc["features"]["webmail"] = webmail
    mailfleet.config.write_text(tomlkit.dumps(doc))
    mailfleet("deploy", "--json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="trixie", choices=["trixie", "bookworm"])
    args = parser.parse_args()
    mailfleet = Mailfleet("mfbench")
    measured: dict[str, dict[str, tuple[float, float]]] = {}
    try:
        mailfleet("lab", "up", "--release", args.release, "--preinstall")
        mailfleet("deploy", "--json")
        mailfleet("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        for webmail in ("roundcube", "sogo"):
            if webmail != "roundcube":
                set_webmail(mailfleet, webmail)
            log_in(mailfleet, webmail)
            measured[webmail] = memory(mailfleet)
    finally:
        mailfleet.down()
    print(f"release {args.release}; MB after one webmail login; RSS sums count shared pages "
          "once per process, PSS shares them out")
    print(f"{'':54} {'RSS':>7} {'PSS':>7}")
    for webmail, units in measured.items():
        web, mail = tier(units, WEB[webmail]), tier(units, MAIL)
        whole = tier(units, tuple(units))
        print(f"{webmail}")
        print(f"  {'web tier (' + ', '.join(n for n in WEB[webmail] if n in units) + ')':52} "
              f"{web[0]:7.0f} {web[1]:7.0f}")
        print(f"  {'mail stack (PostgreSQL, Postfix, Dovecot, milters)':52} "
              f"{mail[0]:7.0f} {mail[1]:7.0f}")
        print(f"  {'whole host, every process':52} {whole[0]:7.0f} {whole[1]:7.0f}")
        top = sorted(units.items(), key=lambda u: -u[1][1])[:12]
        print("    by unit (PSS): " + ", ".join(f"{u} {p:.0f}" for u, (_, p) in top))
    ratio = tier(measured["sogo"], WEB["sogo"])[1] / tier(measured["roundcube"], WEB["roundcube"])[1]
    print(f"ratio SOGo / Roundcube web tier (PSS) {ratio:.1f}")


if __name__ == "__main__":
    main()
