"""Dovecot: IMAP (993, 143 + STARTTLS), LMTP for Postfix, SASL auth for Postfix, Sieve
and ManageSieve (4190), quotas and the quota-status policy service.

Debian 12 ships 2.3 and Debian 13 ships 2.4, whose configuration languages differ (and
some 2.3 habits are silently wrong in 2.4): one complete template per major version,
validated with `doveconf -n` before it replaces the old one, and a restart (not a reload,
which reports success while keeping the old config on some errors) when it changes.
"""

from __future__ import annotations

from pyinfra.facts.files import Directory, File
from pyinfra.operations import files, systemd

from mailfleet.engine import HostContext, config_file
from mailfleet.services import certs, homes
from mailfleet.services.replication import DOVEADM_PORT, DOVEADM_SECRET
from mailfleet.services.mailstore import VMAIL_DIR
from mailfleet.services.platform import platform
from mailfleet.services.postfix import QUOTA_STATUS_PORT
from mailfleet.services.shape import HostPlan, Port, Service, Unit, provided
from mailfleet.templating import render

PACKAGES = ["dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "dovecot-pgsql",
            "dovecot-sieve", "dovecot-managesieved"]
SQL_FILE = "/etc/dovecot/mailfleet-sql.conf.ext"
PORTS = {143: "imap", 993: "imaps", 4190: "managesieve"}
AFTER_VPN = "/etc/systemd/system/dovecot.service.d/mailfleet.conf"
# in a cluster with several mail hosts: the others' proxied deliveries, on the VPN address
LMTP_PORT = 24
DOVEADM_FILE = "/etc/dovecot/mailfleet-doveadm.conf.ext"  # replication's password


def deploy(ctx: HostContext) -> None:
    version = platform(ctx).dovecot
    password, _ = ctx.secret("postgres-mailfleet_dovecot")
    # where a mailbox lives (in a cluster whose database knows homes: services/homes.py)
    where = dict(mail_cluster=ctx.plan.mail_cluster, homes_known=homes.known(ctx),
                 host=ctx.plan.host, first_home=homes.first_home(ctx.plan),
                 lmtp_port=LMTP_PORT)
    # 2.4 reads the connection as part of its config (group dovecot may read it);
    # 2.3's auth process reads the args file as root.
    sql = ctx.op(
        config_file, name="Write Dovecot's database settings", dest=SQL_FILE,
        content=render(f"dovecot/sql-{version}.conf.ext.j2", password=password, **where),
        mode="640" if version == "2.4" else "600",
        group="dovecot" if version == "2.4" else "root", secret=True,
    )
    doveadm = None  # written before the config that includes it, removed after
    if ctx.plan.replicated:
        doveadm_password, _ = ctx.secret(DOVEADM_SECRET)
        doveadm = ctx.op(
            config_file, name="Write Dovecot's replication password", dest=DOVEADM_FILE,
            content=render("dovecot/doveadm.conf.ext.j2", password=doveadm_password),
            mode="640", group="dovecot", secret=True)
    mail = ctx.config.mail
    conf = ctx.op(
        config_file, name="Write dovecot.conf", dest="/etc/dovecot/dovecot.conf",
        content=render(
            f"dovecot/dovecot-{version}.conf.j2", fqdn=ctx.fqdn, domain=mail.domain,
            sql_file=SQL_FILE, cert_file=certs.CERT_FILE, key_file=certs.KEY_FILE,
            cipher_list=certs.TLS12_CIPHERS, vmail_dir=VMAIL_DIR, vmail_uid=mail.vmail_uid,
            vmail_gid=mail.vmail_gid, default_quota_mb=mail.default_quota_mb,
            quota_status_port=QUOTA_STATUS_PORT, private_address=ctx.plan.private_address,
            replicas=ctx.plan.replicated, doveadm_file=DOVEADM_FILE, doveadm_port=DOVEADM_PORT,
            **where,
        ),
        validate="doveconf -n -c {path} >/dev/null",
    )
    if not ctx.plan.replicated:
        doveadm = ctx.op(files.file, name="Remove Dovecot's replication password",
                         path=DOVEADM_FILE, present=False)
    if ctx.plan.mail_cluster:
        order = ctx.op(config_file, name="Start Dovecot once the VPN is up", dest=AFTER_VPN,
                       content=render("dovecot/after-vpn.conf.j2"))
    else:
        order = ctx.op(files.file, name="Remove Dovecot's wait for the VPN", path=AFTER_VPN,
                       present=False)
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(order))
    # Dovecot's LMTP and auth sockets live in Postfix's queue, which a Postfix that has
    # never started yet (Debian 13 with "No configuration") has not created.
    ctx.op(files.directory, name="Create Postfix's private socket directory",
           path="/var/spool/postfix/private", user="postfix", group="root", mode="700")
    ctx.service("dovecot", restart_when=(sql, doveadm, conf, provided(ctx).certificate))


def units(plan: HostPlan) -> tuple[Unit, ...]:
    # (to every member: the take-over watch on a db-only primary probes it too)
    proxied = (Port(LMTP_PORT, "Dovecot LMTP for the other mail hosts", "cluster"),) \
        if plan.mail_cluster else ()
    if plan.replicated:
        proxied += (Port(DOVEADM_PORT, "Dovecot doveadm (replicas for the other mail hosts)",
                         "mail cluster"),)
    return (Unit("dovecot", (*(Port(port, f"Dovecot {name}") for port, name in PORTS.items()),
                             Port(QUOTA_STATUS_PORT, "Dovecot quota-status (localhost)", "local"),
                             *proxied)),)


SERVICE = Service(
    "dovecot", applies=lambda plan: plan.mail, packages=tuple(PACKAGES), deploy=deploy,
    units=units,
    managed_paths=("/etc/dovecot", "/etc/systemd/system/dovecot.service.d"),
    facts=lambda ctx: [(Directory, {"path": "/var/spool/postfix/private"}),
                       *(() if ctx.plan.mail_cluster else ((File, {"path": AFTER_VPN}),)),
                       *(() if ctx.plan.replicated else ((File, {"path": DOVEADM_FILE}),))])
