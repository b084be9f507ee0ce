"""OpenDMARC: the receiving side of SPF and DMARC. Mail arriving on port 25 gets SPF checked
(libspf2) and the From: domain's DMARC policy applied with OpenDKIM's verdict; p=reject is
refused at the end of DATA. Results land in Authentication-Results headers.

Only port 25 passes through it (master.cf gives 587/465 OpenDKIM alone): the host's own
users send from anywhere, and their mail is signed, not judged.
"""

from __future__ import annotations

from pyinfra.operations import systemd

from mailfleet.engine import HostContext, config_file
from mailfleet.services.postfix import OPENDMARC_PORT
from mailfleet.services.shape import Port, Service, Unit
from mailfleet.templating import render

PACKAGES = ["opendmarc", "publicsuffix"]


def deploy(ctx: HostContext) -> None:
    files = [
        ctx.op(config_file, name=f"Write OpenDMARC {dest}", dest=dest,
               content=render(f"opendmarc/{template}", port=OPENDMARC_PORT, fqdn=ctx.fqdn))
        for dest, template in (("/etc/opendmarc/ignore.hosts", "ignore.hosts.j2"),
                               ("/etc/opendmarc.conf", "opendmarc.conf.j2"))
    ]
    unit = ctx.op(config_file, name="Run OpenDMARC in the foreground under systemd",
                  dest="/etc/systemd/system/opendmarc.service.d/mailfleet.conf",
                  content=render("opendmarc/service-override.conf.j2"))
    ctx.op(systemd.daemon_reload, name="Reload systemd units", _if=ctx.changed(unit))
    ctx.service("opendmarc", restart_when=(*files, unit))


SERVICE = Service("opendmarc", applies=lambda plan: plan.mail, packages=tuple(PACKAGES),
                  deploy=deploy,
                  units=(Unit("opendmarc", (Port(OPENDMARC_PORT, "OpenDMARC milter (localhost)",
                                                 "local"),)),),
                  managed_paths=("/etc/opendmarc", "/etc/opendmarc.conf",
                                 "/etc/systemd/system/opendmarc.service.d"))
