"""Values from mailfleet.toml stay one value of the file they are rendered into: each format's
filter is checked by parsing the rendered file back (a small parser of the format where Python
has none) and comparing the value, with hostile values."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mailfleet.config import parse
from mailfleet.errors import ConfigError
from mailfleet.templating import TEMPLATES, TemplateValueError, render

HOSTILE = [
    '"; SOGoTrustProxyAuthentication = YES; X = "',
    "Bob's \"Mail\" \\ and \\\" more",
    "end\\",
    "new\nline\r\tand\x01",
    "<b>&amp; $HOME ${x} `id` ; {a = b;} /* c */ ?> <?php",
    "tail '; phpinfo(); $x = '",
    "ünïcødé ✉",
]


# -- a tiny GNUstep/OpenStep property list parser (what SOGo reads sogo.conf with) -------------

class Plist:
    """Parses the subset sogo.conf uses: dicts { k = v; }, arrays ( a, b ), quoted strings with
    backslash escapes, bare words, /* */ comments."""

    def __init__(self, text: str) -> None:
        self.text, self.i = text, 0

    def skip(self) -> None:
        while True:
            while self.i < len(self.text) and self.text[self.i].isspace():
                self.i += 1
            if self.text.startswith("/*", self.i):
                self.i = self.text.index("*/", self.i) + 2
            elif self.text.startswith("//", self.i):
                self.i = self.text.index("\n", self.i)
            else:
                return

    def expect(self, ch: str) -> None:
        self.skip()
        assert self.text[self.i] == ch, f"expected {ch!r} at {self.text[self.i:self.i + 40]!r}"
        self.i += 1

    def value(self):
        self.skip()
        ch = self.text[self.i]
        if ch == "{":
            self.i += 1
            out = {}
            while True:
                self.skip()
                if self.text[self.i] == "}":
                    self.i += 1
                    return out
                key = self.value()
                assert key not in out, f"{key} set twice"
                self.expect("=")
                out[key] = self.value()
                self.expect(";")
        if ch == "(":
            self.i += 1
            items = []
            while True:
                self.skip()
                if self.text[self.i] == ")":
                    self.i += 1
                    return items
                items.append(self.value())
                self.skip()
                if self.text[self.i] == ",":
                    self.i += 1
        if ch == '"':
            self.i += 1
            out = []
            escapes = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}
            while self.text[self.i] != '"':
                c = self.text[self.i]
                if c == "\\":
                    nxt = self.text[self.i + 1]
                    if nxt in "01234567":
                        out.append(chr(int(self.text[self.i + 1:self.i + 4], 8)))
                        self.i += 4
                        continue
                    out.append(escapes[nxt])
                    self.i += 2
                    continue
                assert c != "\n", "a raw line break inside a string"
                out.append(c)
                self.i += 1
            self.i += 1
            return "".join(out)
        word = re.match(r"[A-Za-z0-9_.:$/-]+", self.text[self.i:])
        assert word, f"unexpected {self.text[self.i:self.i + 40]!r}"
        self.i += len(word.group())
        return word.group()

    def document(self) -> dict:
        result = self.value()
        self.skip()
        assert self.i == len(self.text), f"text after the top dict: {self.text[self.i:]!r}"
        return result


def sogo_conf(title: str = "Webmail", password: str = "pw", activesync: bool = True) -> dict:
    text = render("sogo/sogo.conf.j2", fqdn="mx1.example.org", db_user="mailfleet_sogo",
                  db_password=password, db_name="sogo", accounts_db="mailfleet",
                  db_address="127.0.0.1:5432", remote=False, server="localhost",
                  domain="example.org", title=title, port=20000, activesync=activesync,
                  min_password_length=12, min_password_regex=".{12,}")
    return Plist(text).document()


@pytest.mark.parametrize("title", HOSTILE)
def test_sogo_conf_keeps_a_hostile_title_inside_its_string(title):
    plain = sogo_conf()
    hostile = sogo_conf(title=title, password=title)
    assert set(hostile) == set(plain), "the title added or removed a setting"
    assert hostile["SOGoPageTitle"] == title
    assert hostile["SOGoUserSources"][0]["displayName"] == f"{title} users"
    assert hostile["SOGoProfileURL"].startswith("postgresql://mailfleet_sogo:" + title + "@")
    assert hostile["SOGoTrustProxyAuthentication"] == "NO"


def test_sogo_conf_parses_and_never_trusts_a_proxy_header():
    conf = sogo_conf(activesync=False)
    assert conf["SOGoTrustProxyAuthentication"] == "NO"
    assert conf["SOGoUserSources"][0]["userPasswordPolicy"][0]["regex"] == ".{12,}"


# -- PHP single-quoted strings (Roundcube's config files) --------------------------------------

def php_single_quoted(text: str, key: str) -> str:
    """The value of `$config['KEY'] = '...';` read the way PHP reads a '...' literal."""
    start = text.index(f"$config['{key}'] = '") + len(f"$config['{key}'] = '")
    out, i = [], start
    while text[i] != "'":
        if text[i] == "\\" and text[i + 1] in "\\'":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    assert text[i + 1] == ";", f"the string ended early: {text[i:i + 40]!r}"
    return "".join(out)


@pytest.mark.parametrize("title", HOSTILE)
def test_roundcube_config_keeps_hostile_values_in_php_strings(title):
    values = dict(fqdn="mx1.example.org", ca_file="/etc/mailfleet/tls/ca.crt",
                  db_user="roundcube", db_password=title, db_name="roundcube",
                  db_host="127.0.0.1", server="localhost", remote=False,
                  des_key="0123456789abcdef01234567", upload_mb=30)
    text = render("roundcube/config.inc.php.j2", title=title, **values)
    assert php_single_quoted(text, "product_name") == title
    assert php_single_quoted(text, "db_dsnw") == f"pgsql://roundcube:{title}@127.0.0.1/roundcube"
    # nothing after the title's line became code: every statement line is an assignment
    for line in text.splitlines():
        if line.startswith("$config['product_name']"):
            assert line.endswith("';") or "\n" in title


# -- XML (Thunderbird autoconfig, Outlook autodiscover) ----------------------------------------

@pytest.mark.parametrize("title", [t for t in HOSTILE if "\x01" not in t])
def test_autoconfig_xml_parses_back_to_the_hostile_title(title):
    text = render("web/config-v1.1.xml.j2", domain="example.org", domains=["example.org"],
                  fqdn="mx1.example.org", title=title)
    root = ET.fromstring(text.encode())
    name = root.find("emailProvider/displayName").text
    # XML normalises \r\n and \r to \n in text
    assert name == f"{title} (example.org)".replace("\r\n", "\n").replace("\r", "\n")


def test_xml_refuses_what_xml_cannot_hold_and_autoescapes_the_rest():
    with pytest.raises(TemplateValueError, match="control character"):
        render("web/config-v1.1.xml.j2", domain="example.org", domains=["example.org"],
               fqdn="mx1.example.org", title="a\x01b")
    text = render("web/autodiscover.xml.j2", fqdn='x"<y>&')
    assert ET.fromstring(text.encode()).find(".//{*}Server").text == 'x"<y>&'


# -- Python (Radicale's auth module) -----------------------------------------------------------

@pytest.mark.parametrize("value", HOSTILE)
def test_radicale_auth_module_holds_hostile_strings_as_python_literals(value):
    text = render("radicale/mailfleet_radicale_auth.py.j2", mail_host=value, ca_file=value)
    tree = ast.parse(text)
    assigned = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("HOST", "CA_FILE")}
    assert assigned == {"HOST": value, "CA_FILE": value}


# -- bare words (nginx, INI, Postfix, Dovecot): refused, since these formats cannot escape -----

NGINX = dict(fqdn="mx1.example.org", acme_root="/var/lib/mailfleet/acme",
             web_root="/var/lib/mailfleet/www", cert_file="/etc/mailfleet/tls/fullchain.pem",
             key_file="/etc/mailfleet/tls/key.pem", cipher_list="ECDHE-ECDSA-AES256-GCM-SHA384",
             http2_on=True, server_names=["mx1.example.org"], mta_sts_names=[],
             webmail="sogo", webmail_path="/", webmail_prefix="", roundcube_root="/r",
             php_socket="/run/php.sock", upload_mb=30, radicale=True, radicale_path="/radicale",
             radicale_port=5232, radicale_address="10.8.0.1", sogo_port=20000,
             dav_failed_log="/var/log/nginx/mailfleet-dav-failed.log",
             sogo_path="/SOGo",
             sogo_resources="/usr/lib/GNUstep/SOGo/WebServerResources/", activesync=True)


@pytest.mark.parametrize("value", HOSTILE + ["a b", "x;y", "$host", "#c", "{", "'q'"])
def test_nginx_refuses_a_value_that_is_not_one_word(value):
    for key in ("radicale_path", "radicale_address", "web_root", "sogo_path"):
        with pytest.raises(TemplateValueError, match="one word"):
            render("nginx/mailfleet.conf.j2", **{**NGINX, key: value})
    with pytest.raises(TemplateValueError):
        render("nginx/mailfleet.conf.j2", **{**NGINX, "server_names": ["ok.example", value]})


def sogo_locations(text: str) -> list[str]:
    """The bodies of nginx's location blocks that proxy to SOGo."""
    return [body for body in re.findall(r"location [^{]*\{(.*?)\n\t\}", text, re.S)
            if "proxy_pass http://127.0.0.1:20000" in body]


def test_nginx_empties_sogos_trust_headers_in_every_sogo_location():
    text = render("nginx/mailfleet.conf.j2", **NGINX)
    blocks = sogo_locations(text)
    assert len(blocks) == 3  # the SOGo path, its login (/connect, rate-limited) and ActiveSync
    for body in blocks:
        assert 'proxy_set_header x-webobjects-remote-user "";' in body
        assert 'proxy_set_header x-webobjects-auth-type "";' in body
    assert text.count("ssl_prefer_server_ciphers on;") == 1 and "ssl_prefer_server_ciphers off" not in text


# -- every variable of every config template goes through a filter -----------------------------

# Shell scripts get the shell-quoting filter of finding 1 and restic's settings are finding 2's;
# the lab's BIND files and the TSIG credentials file change with finding 9's per-host keys.
OTHER_FINDINGS = {"acme/deploy-hook.sh.j2", "backup/mailfleet-backup.sh.j2",
                  "backup/mailfleet-restore.sh.j2", "certs/local-ca.sh.j2",
                  "wireguard/wg-apply.sh.j2", "backup/restic.env.j2", "backup/archive.conf.j2",
                  "backup/mailfleet-backup.service.j2", "backup/mailfleet-backup.timer.j2",
                  "acme/rfc2136.ini.j2", "lab/named.conf.local.j2", "lab/zone.j2"}
TEMPLATE_NAMES = sorted(str(p.relative_to(TEMPLATES)) for p in Path(TEMPLATES).rglob("*.j2")
                        if str(p.relative_to(TEMPLATES)) not in OTHER_FINDINGS)
# blocks of the template itself ({% set %}) and literal choices, not values
UNFILTERED_OK = {"ssl_common", "sogo_proxy", "'' if http2_on else ' http2'",
                 '" (mail host)" if peer.host else ""'}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_every_value_in_a_config_template_is_filtered(name):
    text = (Path(TEMPLATES) / name).read_text()
    bare = [expr for expr in re.findall(r"\{\{\s*(.*?)\s*\}\}", text)
            if "|" not in expr and expr not in UNFILTERED_OK]
    assert bare == [], f"{name}: rendered without escaping: {bare}"


def test_the_filters_refuse_what_their_format_cannot_hold():
    from mailfleet.templating import line, toml_string, word
    import tomllib

    for value in HOSTILE:
        assert tomllib.loads(f"x = {toml_string(value)}")["x"] == value
    assert line("SELECT a FROM b WHERE c = '%s'") == "SELECT a FROM b WHERE c = '%s'"
    for bad in ("a\nb", "a\rb", "x\x00"):
        with pytest.raises(TemplateValueError, match="one line"):
            line(bad)
    assert word("[2001:db8::1]:51820") == "[2001:db8::1]:51820"
    with pytest.raises(TemplateValueError):
        word("10.0.0.1\nPostUp = id")


# -- the title's validation says what it refuses -----------------------------------------------

BASE = '[mail]\ndomain = "example.org"\nhostname = "mail.example.org"\n\n[web]\n'


def test_a_title_may_have_quotes_and_backslashes():
    cfg = parse(BASE + 'title = "Bob\'s \\"Mail\\" \\\\ here"\n')
    assert cfg.web.title == 'Bob\'s "Mail" \\ here'


@pytest.mark.parametrize("title", ['"a\\nb"', '"<b>x</b>"', '"  "', '"tab\\there"'])
def test_a_title_with_a_line_break_or_markup_is_refused_by_a_true_sentence(title):
    with pytest.raises(ConfigError) as caught:
        parse(BASE + f"title = {title}\n")
    assert "web.title" in caught.value.message
    assert "no < or > and no control characters" in caught.value.message
