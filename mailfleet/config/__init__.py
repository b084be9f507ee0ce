"""mailfleet.toml: the model (values, settings, network, model), reading it with errors that
name the file, line and key (load), and writing it back (edit).

The names the rest of mailfleet imports are re-exported here: `from mailfleet.config import
Config, HostSettings, load` works whatever module a name lives in.
"""

from mailfleet.config.edit import edit, save
from mailfleet.config.load import DEFAULT_PATH, ENV_VAR, config_path, find_line, load, parse, read_text
from mailfleet.config.model import Config
from mailfleet.config.network import (
    REPORT_LOCAL_CHARS,
    DnsSettings,
    DnsZone,
    HostSettings,
    SshSettings,
    VpnPeer,
    VpnSettings,
)
from mailfleet.config.provider import PROVIDERS, TOKEN_VARIABLES, ProviderSettings
from mailfleet.config.settings import (
    LETSENCRYPT,
    LETSENCRYPT_STAGING,
    SSHD_OWNED,
    WEBMAIL_BOTH_REASON,
    WEBMAIL_CHOICES,
    AcmeSettings,
    AdminSettings,
    BackupSettings,
    ClusterSettings,
    Fail2banSettings,
    FeatureSettings,
    MailSettings,
    Role,
    WebSettings,
    sshd_keyword,
)
from mailfleet.config.values import (
    DOMAIN_RE,
    HOST_NAME_RE,
    SSH_HOST_RE,
    UNIX_USER_RE,
    WG_KEY_RE,
    domain_name,
    resolver_address,
    wireguard_key,
)
from mailfleet.errors import ConfigError

__all__ = [
    "DEFAULT_PATH", "DOMAIN_RE", "ENV_VAR", "HOST_NAME_RE", "LETSENCRYPT", "LETSENCRYPT_STAGING",
    "REPORT_LOCAL_CHARS", "SSHD_OWNED", "SSH_HOST_RE", "UNIX_USER_RE", "WEBMAIL_BOTH_REASON",
    "WEBMAIL_CHOICES", "WG_KEY_RE", "AcmeSettings", "AdminSettings", "BackupSettings", "ClusterSettings", "Config",
    "ConfigError", "DnsSettings", "DnsZone", "Fail2banSettings", "FeatureSettings",
    "HostSettings", "MailSettings", "PROVIDERS", "ProviderSettings", "TOKEN_VARIABLES", "Role", "SshSettings", "VpnPeer", "VpnSettings",
    "WebSettings", "config_path", "domain_name", "edit", "find_line", "load", "parse",
    "read_text", "resolver_address", "save", "sshd_keyword", "wireguard_key",
]
