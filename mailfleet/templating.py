"""Jinja2 rendering of the files under mailfleet/templates/."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def _shell_filters(env: jinja2.Environment) -> None:
    """`shquote`: a value as one shell word (shlex.quote), for templates of shell scripts
    (*.sh.j2): nothing from the config or a host reaches a shell unquoted."""
    env.filters["shquote"] = lambda value: shlex.quote(str(value))


_shell_filters(_env)


def render(name: str, **values: Any) -> str:
    return _env.get_template(name).render(**values)


def render_init(domain: str, hostname: str, hosts: list[dict] | None = None,
                fail2ban_ignore: list[str] | None = None, dns_check: bool = True) -> str:
    defaults = {"ssh_port": 22, "ssh_user": "root", "ssh_key": None, "ssh_known_hosts": None,
                "fqdn": None, "ipv4": None, "roles": ["mail", "db", "web"], "lab": None}
    return render(
        "mailfleet.toml.j2",
        domain=domain,
        hostname=hostname,
        hosts=[{**defaults, **h} for h in (hosts or [])],
        fail2ban_ignore=fail2ban_ignore or [],
        dns_check=dns_check,
    )
