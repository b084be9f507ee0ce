"""Switching webmail off in mailfleet.toml removes Roundcube cleanly, and switching it back
brings it back with the users' data (the file goes back to what it was after the module:
`lab_settings`)."""

from __future__ import annotations

import json

from conftest import Cli, LabSettings


def _login_page(cli: Cli, node: str) -> str:
    return cli.ssh(node, "curl -sk -o /dev/null -w '%{http_code}' --resolve "
                         f"{node}.example.internal:443:127.0.0.1 https://{node}.example.internal/")


def test_webmail_none_removes_roundcube_and_roundcube_brings_it_back(lab_settings: LabSettings):
    deployed = lab_settings.cli
    lab_settings.set(features={"webmail": "none"})
    for node in ("n1", "n2"):
        assert _login_page(deployed, node) == "404"
        left = deployed.ssh(node, "dpkg-query -W -f='${Package} ${Status}\\n' 'roundcube*' "
                                  "'php*-fpm' 2>/dev/null | grep ' installed' || true")
        assert left == "", left
        assert "roundcube-auth" not in deployed.ssh(node, "fail2ban-client status")
        assert deployed.ssh(node, "ls /etc/roundcube 2>&1 || true").endswith("No such file or directory")
        # the users' Roundcube data stays until dropped by hand
        assert deployed.ssh(node, "runuser -u postgres -- psql -tAc \"SELECT 1 FROM pg_database "
                                  "WHERE datname = 'roundcube'\"") == "1"
    again = deployed.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}
    health = json.loads(deployed("check", "--json", check=False).stdout)
    assert health["ok"], [c for c in health["checks"] if c["status"] != "ok"]
    assert not [c for c in health["checks"] if c["name"] == "webmail login page"]

    lab_settings.set(features={"webmail": "roundcube"})
    for node in ("n1", "n2"):
        assert _login_page(deployed, node) == "200"
    again = deployed.json("deploy")
    assert again["changes"] == 0, {h: r["changed"] for h, r in again["hosts"].items()}
