"""Memory of the two webmail choices on one lab host, measured in one run: Roundcube
(nginx + PHP-FPM) against SOGo (nginx + sogod workers + memcached), each right after a
user's login, and the ratio SOGo / Roundcube.

Boots one Debian lab host, deploys with webmail = "roundcube", logs a user in over HTTPS
(which starts the PHP-FPM pool on demand), sums the resident memory (RSS) of the web tier's
processes, then switches the config to "sogo", deploys, logs in again and measures again.
The rest of the mail stack is the same in both and is printed for scale.

Run as root: .venv/bin/python benchmarks/webmail_memory.py [--release bookworm]
"""

from __future__ import annotations

import argparse
import re

import tomlkit
from _common import Mailfleet

USER, PASSWORD = "reader@example.internal", "Quiet-river-2026-k"
# process names (ps -o comm) of each tier
WEB = {"roundcube": ("nginx", "php-fpm"), "sogo": ("nginx", "sogod", "memcached")}
MAIL = ("postgres", "master", "smtpd", "qmgr", "dovecot", "imap", "opendkim", "opendmarc")


def rss_mb(mailfleet: Mailfleet, names: tuple[str, ...]) -> float:
    """The summed RSS of processes whose command name starts with one of `names`."""
    _, text = mailfleet.ssh("n1", "ps -eo rss=,comm=")
    total_kb = 0
    for line in text.splitlines():
        kb, _, comm = line.strip().partition(" ")
        if kb.isdigit() and comm.strip().startswith(names):
            total_kb += int(kb)
    return total_kb / 1024


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
    measured: dict[str, float] = {}
    try:
        mailfleet("lab", "up", "--release", args.release, "--preinstall")
        mailfleet("deploy", "--json")
        mailfleet("user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
        for webmail in ("roundcube", "sogo"):
            if webmail != "roundcube":
                set_webmail(mailfleet, webmail)
            log_in(mailfleet, webmail)
            measured[webmail] = rss_mb(mailfleet, WEB[webmail])
        mail = rss_mb(mailfleet, MAIL)
    finally:
        mailfleet.down()
    print(f"release                         {args.release}")
    print(f"Roundcube tier (nginx, php-fpm) {measured['roundcube']:.0f} MB RSS after one login")
    print(f"SOGo tier (nginx, sogod, memcached) {measured['sogo']:.0f} MB RSS after one login")
    print(f"mail stack (PostgreSQL, Postfix, Dovecot, milters) {mail:.0f} MB RSS")
    print(f"ratio SOGo / Roundcube          {measured['sogo'] / measured['roundcube']:.1f}")


if __name__ == "__main__":
    main()
