"""Jinja2 rendering of the files under mailfleet/templates/."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

TEMPLATES = Path(__file__).parent / "templates"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    # XML templates escape every value even if a filter is forgotten; the other formats have
    # no such safety net in Jinja, so each value there goes through its format's filter below
    autoescape=jinja2.select_autoescape(enabled_extensions=("xml.j2",), default=False,
                                       default_for_string=False),
)


# -- escaping for the format each value is rendered into (config files) ----------------------
# A value from mailfleet.toml must stay one value of the file it lands in: a quote in a title
# must not close a SOGo string and open a new setting. The filters escape (or, where the format
# has no escape, refuse) and are named after the format, used inside the format's own quotes:
#   plist  "{{ v | plist }}"   GNUstep property list string (sogo.conf)
#   php    '{{ v | php }}'     PHP single-quoted string (Roundcube's config)
#   xml    {{ v | xml }}       XML text or attribute (autoconfig, autodiscover)
#   pystr  {{ v | pystr }}     a Python string literal, quotes included
#   toml   {{ v | toml }}      a TOML string, quotes included (mailfleet init)
#   word   {{ v | word }}      one bare word in nginx, Postfix, Dovecot, INI/systemd files:
#                              these have no usable escape ($ and quotes are live in nginx),
#                              so anything beyond a plain word is refused
#   line   {{ v | line }}      the rest of a line (Postfix query, sshd line): no line breaks
#   int    {{ v | int }}       (Jinja's own) numbers


class TemplateValueError(ValueError):
    """A value that the target format cannot hold as one plain value."""


def plist_string(value: object) -> str:
    """The inside of a "..." string of a GNUstep/OpenStep property list."""
    out = []
    for ch in str(value):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return "".join(out)


def php_string(value: object) -> str:
    """The inside of a '...' PHP string: only the backslash and the quote are special."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


_XML_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_text(value: object) -> markupsafe.Markup:
    """XML text or attribute value (&, <, >, both quotes escaped); XML 1.0 cannot carry
    control characters at all, so they are refused."""
    text = str(value)
    if _XML_FORBIDDEN.search(text):
        raise TemplateValueError(f"{text!r} has a control character, which XML cannot hold")
    return markupsafe.escape(text)


def python_string(value: object) -> str:
    """A Python string literal (quotes included) holding exactly `value`."""
    return repr(str(value))


_WORD = re.compile(r"[A-Za-z0-9_.:/@%+,=~*\[\]-]*")


def word(value: object) -> str:
    """One bare word (or nothing) of nginx/Postfix/Dovecot/INI syntax; refuses whitespace, quotes, `$`,
    `;`, `#`, braces and backslashes, which these formats read as syntax."""
    text = str(value)
    if not _WORD.fullmatch(text):
        raise TemplateValueError(f"{text!r} cannot be written as one word of a config file")
    return text


def toml_string(value: object) -> str:
    """A TOML basic string, quotes included (JSON's string escapes are TOML's too)."""
    return json.dumps(str(value), ensure_ascii=False)


def line(value: object) -> str:
    """A value that runs to the end of its line (a Postfix map's query, an sshd line, a
    comment): a line break would start a new setting, so control characters are refused."""
    text = str(value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise TemplateValueError(f"{text!r} cannot be written on one line of a config file")
    return text


def yaml_string(value: object) -> str:
    """A YAML double-quoted scalar, quotes included (a JSON string is one)."""
    return json.dumps(str(value), ensure_ascii=False)


_env.filters.update(yaml=yaml_string, plist=plist_string, php=php_string, xml=xml_text, pystr=python_string,
                    word=word, line=line, toml=toml_string)


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
