"""The sections of mailfleet.toml about what is deployed: mail, admin, fail2ban, features,
web, acme and backup (the network, DNS and hosts are in network.py)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mailfleet.config.values import LABEL, Strict, checked_user_name, domain_name

Role = Literal["mail", "db", "web"]
WEBMAIL_CHOICES = ("roundcube", "sogo", "none")
WEBMAIL_BOTH_REASON = (
    "Roundcube and SOGo cannot both be deployed: each writes the user's single active Sieve "
    "script (SOGo's vacation message silently disables Roundcube's filters), and users would "
    "get two password screens and two address books; choose one"
)


class MailSettings(Strict):
    domain: str = Field(description="Primary mail domain.")
    hostname: str = Field(description="Fully qualified name of the mail host (MX, SMTP banner).")
    domains: list[str] = Field(default_factory=list, description="Further domains served.")
    dkim_selector: str = Field("mail", description="DKIM selector: the key is at SELECTOR._domainkey.")
    message_size_mb: Annotated[int, Field(ge=1, le=500)] = 50
    default_quota_mb: Annotated[int, Field(ge=1)] = 2048
    min_password_length: Annotated[int, Field(ge=8, le=128)] = 12
    vmail_uid: Annotated[int, Field(ge=1000, le=59999)] = 5000
    vmail_gid: Annotated[int, Field(ge=1000, le=59999)] = 5000

    @field_validator("dkim_selector")
    @classmethod
    def _check_selector(cls, value: str) -> str:
        if not re.fullmatch(LABEL, value):
            raise ValueError(f"{value!r} is not a valid DKIM selector (one DNS label, like mail)")
        return value

    @property
    def all_domains(self) -> list[str]:
        """The primary domain first, then the others, without repeats."""
        return list(dict.fromkeys([self.domain, *self.domains]))

    @field_validator("domain", "hostname")
    @classmethod
    def _checkdomain_name(cls, value: str) -> str:
        return domain_name(value)

    @field_validator("domains")
    @classmethod
    def _check_domains(cls, values: list[str]) -> list[str]:
        return [domain_name(v) for v in values]


# sshd_config keywords mailfleet decides (templates/ssh/mailfleet.conf.j2, the VPN listen
# drop-in) or that would open another way in (docs/hardening.md). sshd keeps the first value
# it reads, so most repeats would be ignored anyway; refusing them says so instead of letting
# a line look effective. Lower case: sshd ignores the keyword's case.
SSHD_OWNED = frozenset(k.lower() for k in (
    # who may log in, and how
    "PermitRootLogin", "AllowUsers", "AuthenticationMethods", "PubkeyAuthentication",
    "PasswordAuthentication", "KbdInteractiveAuthentication", "ChallengeResponseAuthentication",
    "PermitEmptyPasswords", "MaxAuthTries", "LoginGraceTime", "AuthorizedKeysFile",
    "AuthorizedKeysCommand", "AuthorizedKeysCommandUser", "HostbasedAuthentication",
    "IgnoreRhosts", "GSSAPIAuthentication", "KerberosAuthentication", "StrictModes",
    "PermitUserEnvironment", "TrustedUserCAKeys", "AuthorizedPrincipalsFile",
    "AuthorizedPrincipalsCommand", "AuthorizedPrincipalsCommandUser", "RevokedKeys",
    # no X11 or agent forwarding; idle sessions end
    "X11Forwarding", "AllowAgentForwarding", "ClientAliveInterval", "ClientAliveCountMax",
    # algorithms
    "KexAlgorithms", "Ciphers", "MACs", "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes",
    "HostKeyAlgorithms",
    # where sshd listens (ssh.vpn_only moves it; the firewall opens what sshd listens on)
    "ListenAddress", "Port",
))


def sshd_keyword(line: str) -> str | None:
    """The keyword of one sshd_config line (`Key value`, `Key=value`, `Key = value`), as
    sshd splits it; None when the text is not one such line."""
    if "\n" in line or "\r" in line:
        return None
    found = re.fullmatch(r"\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(\S.*)", line)
    return found.group(1) if found else None


class AdminSettings(Strict):
    user: str = "mfadmin"
    uid: Annotated[int, Field(ge=1000, le=59999)] = 1000
    ssh_key: str | None = Field(
        None, description="Public key (or its .pub file) for the admin user; default: the "
                          "public half of each host's ssh_key.")
    remove_users: list[str] = Field(
        default_factory=lambda: ["linuxuser"],
        description="Provider default users to delete (never the one mailfleet connects as).")
    sshd_settings: list[str] = Field(
        default_factory=list,
        description="Extra sshd_config lines after mailfleet's own; Match, Include and the "
                    "keywords mailfleet sets are refused (they could loosen them).")

    @field_validator("user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        return checked_user_name(value, "is not a usable admin user name (lower case, not root)")

    @field_validator("remove_users")
    @classmethod
    def _check_removals(cls, values: list[str]) -> list[str]:
        return [checked_user_name(v, "cannot be removed (not a user name, or root)") for v in values]

    @field_validator("sshd_settings")
    @classmethod
    def _check_sshd_lines(cls, values: list[str]) -> list[str]:
        for number, value in enumerate(values, start=1):
            keyword = sshd_keyword(value)
            if keyword is None:
                raise ValueError(f"entry {number}, {value!r}, is not one sshd_config line "
                                 "(Keyword value)")
            if keyword.lower() in ("match", "include"):
                raise ValueError(f"entry {number}, {value!r}: {keyword} is refused (a Match "
                                 "block or an included file could override mailfleet's SSH "
                                 "settings)")
            if keyword.lower() in SSHD_OWNED:
                raise ValueError(f"entry {number}, {value!r}: {keyword} is set by mailfleet "
                                 "and cannot be changed here")
        return [v.strip() for v in values]

    @model_validator(mode="after")
    def _admin_is_kept(self) -> AdminSettings:
        if self.user in self.remove_users:
            raise ValueError(f"remove_users lists the admin user {self.user!r} itself")
        return self


class Fail2banSettings(Strict):
    bantime: str = Field("1h", description="How long an address stays banned (fail2ban time).")
    findtime: str = Field("10m", description="Window in which failures are counted.")
    maxretry: Annotated[int, Field(ge=1, le=100)] = 5
    ignore: list[str] = Field(default_factory=list,
                              description="Your own addresses or networks: never banned.")

    @field_validator("bantime", "findtime")
    @classmethod
    def _check_time(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[smhdw]?", value.strip()):
            raise ValueError(f"{value!r} is not a duration like 600, 10m, 1h or 1d")
        return value.strip()

    @field_validator("ignore")
    @classmethod
    def _check_networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or network") from None
        return values


class FeatureSettings(Strict):
    webmail: Literal["roundcube", "sogo", "none"] = "roundcube"
    radicale: bool = False
    # Exchange ActiveSync for phones' built-in mail/calendar apps: a part of SOGo
    activesync: bool = False
    firewall: bool = True
    wireguard: bool = False
    backups: bool = True

    @field_validator("webmail", mode="before")
    @classmethod
    def _one_webmail(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple, set)):
            chosen = {str(v).lower() for v in value}
            if {"roundcube", "sogo"} <= chosen:
                raise ValueError(WEBMAIL_BOTH_REASON)
            raise ValueError('must be one of "roundcube", "sogo" or "none", not a list')
        if isinstance(value, str) and value.lower() not in WEBMAIL_CHOICES:
            if "roundcube" in value.lower() and "sogo" in value.lower():
                raise ValueError(WEBMAIL_BOTH_REASON)
            raise ValueError(f'must be "roundcube", "sogo" or "none", not {value!r}')
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _radicale_needs_roundcube(self) -> FeatureSettings:
        if self.radicale and self.webmail == "sogo":
            raise ValueError(
                "radicale = true is not needed with SOGo, which has its own calendars and "
                "contacts; set radicale = false"
            )
        if self.activesync and self.webmail != "sogo":
            raise ValueError(
                f'activesync = true needs webmail = "sogo" (ActiveSync is a part of SOGo), '
                f'not {self.webmail!r}'
            )
        return self


class WebSettings(Strict):
    webmail_path: str = Field("/", description="Where webmail is served on https://HOSTNAME.")
    radicale_path: str = Field("/radicale", description="Where CalDAV/CardDAV is served.")
    title: str = Field("Webmail", description="The name on the webmail login page.")

    @field_validator("webmail_path", "radicale_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not re.fullmatch(r"/([a-z0-9_-]+/?)*", value):
            raise ValueError(f"{value!r} is not a URL path like / or /webmail")
        return "/" + value.strip("/") if value != "/" else "/"

    @model_validator(mode="after")
    def _radicale_has_its_own_path(self) -> WebSettings:
        if self.radicale_path == "/" or self.radicale_path == self.webmail_path:
            raise ValueError(f"radicale_path {self.radicale_path!r} must be a path of its own, "
                             "like /radicale")
        return self

    @field_validator("title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        # quotes and backslashes are fine: each template escapes the title for its format;
        # < and > are refused because the webmail pages show it as HTML
        if not value.strip() or any(c in value for c in "<>") or any(
                ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError(f"{value!r} cannot be a title (it must not be empty and must have "
                             "no < or > and no control characters such as a line break)")
        return value.strip()


LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


class AcmeSettings(Strict):
    """Certificates from an ACME CA (Let's Encrypt by default) instead of the local CA."""

    enabled: bool = Field(False, description="Obtain and renew the host certificate by ACME.")
    directory: str = Field(LETSENCRYPT, description="The ACME server's directory URL.")
    staging: bool = Field(False, description="Use Let's Encrypt's staging server (for trials).")
    email: str | None = Field(None, description="Contact for expiry notices; default postmaster@DOMAIN.")
    challenge: Literal["http-01", "dns-01"] = Field(
        "http-01", description="How the CA checks the names: HTTP on port 80 through nginx, or "
                               "TXT records published with RFC 2136 in the [[dns.zones]].")
    dns_propagation_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        60, description="DNS-01: how long certbot waits for the TXT records to reach every "
                        "name server of the zone before the CA looks.")
    directory_ca_file: str | None = Field(
        None, description="A PEM file of the CA that signed a private ACME server's HTTPS "
                          "certificate (Pebble, step-ca); public CAs need none.")
    tsig_keys: dict[str, str] = Field(
        default_factory=dict,
        description="DNS-01: per host name, the TSIG key file certbot on that host signs its "
                    "challenge records with. Give each host its own key that the DNS server "
                    "lets update only the host's _acme-challenge TXT records; the zones' "
                    "keys (tsig_key_file) never leave this machine.")

    @field_validator("directory")
    @classmethod
    def _check_directory(cls, value: str) -> str:
        if not re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
            raise ValueError(f"{value!r} is not an https:// URL")
        return value

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[a-z0-9.-]+\.[a-z]+", value.lower()):
            raise ValueError(f"{value!r} is not a mail address")
        return value

    @field_validator("directory_ca_file")
    @classmethod
    def _check_ca_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read {value} ({getattr(err, 'strerror', None) or err})") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{value} holds no PEM certificate")
        return str(path)

    @property
    def directory_url(self) -> str:
        return LETSENCRYPT_STAGING if self.staging else self.directory


class BackupSettings(Strict):
    """Backups with restic (mail store, keys, secrets, PostgreSQL base backups and archived
    WAL) to a repository, encrypted with a password kept on this machine."""

    repository: str | None = Field(
        None, description="restic repository as the hosts reach it: a path on the host, "
                          "sftp:USER@HOST:/PATH, s3:https://HOST/BUCKET, rest:https://...; "
                          "unset: no backups.")
    password_file: str = Field(
        "~/.config/mailfleet/backup-password",
        description="The repository password, on this machine (made by the first deploy "
                    "if missing); without it no backup can be restored.")
    keep_daily: Annotated[int, Field(ge=1, le=366)] = 7
    keep_weekly: Annotated[int, Field(ge=0, le=104)] = 4
    keep_monthly: Annotated[int, Field(ge=0, le=120)] = 6
    max_age_hours: Annotated[int, Field(ge=1, le=24 * 31)] = Field(
        26, description="`backup verify` and `check` fail when the newest backup is older.")
    schedule: str = Field("*-*-* 03:17:00", description="When the timer runs (systemd OnCalendar).")

    @field_validator("repository")
    @classmethod
    def _check_repository(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"(/[^\s]+|(sftp|s3|rest|b2|azure|gs|swift|rclone):\S+)", value):
            raise ValueError(f"{value!r} is not a restic repository (an absolute path on the "
                             "host, or sftp:, s3:, rest:, ... with its address)")
        # restic runs `ssh HOST ...` for sftp: and `rclone REMOTE ...`: a host, user or remote
        # starting with "-" would be an option there (-oProxyCommand=... runs as root)
        scheme, _, rest = value.partition(":")
        target = rest.removeprefix("//") if scheme == "sftp" else rest
        if scheme in ("sftp", "rclone") and re.match(r"([^@/:]*@)?-|-", target):
            raise ValueError(f"{value!r} names a host or remote starting with '-', which ssh or "
                             "rclone would take for an option")
        return value

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        if not re.fullmatch(r"[\w*:,./~ -]+", value):
            raise ValueError(f"{value!r} is not a systemd calendar expression")
        return value


class ClusterSettings(Strict):
    """The hosts with the db role as one replicated accounts database (Patroni + etcd over
    the WireGuard network): 3 or 5 of them, one primary, the others streaming standbys."""

    enabled: bool = Field(False, description="Form one cluster of the hosts with the db role.")
    max_lag_bytes: Annotated[int, Field(ge=0)] = Field(
        16 * 1024 * 1024, description="`check` fails a standby further behind than this.")
    takeover_after: Annotated[int, Field(ge=30, le=86400)] = Field(
        120, description="Seconds a mail host may be unreachable before its mailboxes' "
        "replicas become their homes (the surviving primary's host decides).")
