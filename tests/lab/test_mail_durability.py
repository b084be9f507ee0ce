"""PostgreSQL killed with SIGKILL in the middle of a stream of deliveries loses no message
that Postfix accepted: every 250 ends up in the Maildir once PostgreSQL is back (systemd
restarts it: mailfleet's drop-in) and Postfix retries what it had to defer."""

from __future__ import annotations

import smtplib
import threading
import time

from conftest import Node

MESSAGES = 120
KILL_AFTER = 30  # accepted messages before the kill


def stream(node: Node, recipient: str, kill_now: threading.Event) -> tuple[list[str], list[str]]:
    """Send MESSAGES on port 25 as a stranger would; (accepted subjects, refusals)."""
    accepted, refused = [], []
    smtp = None
    for i in range(MESSAGES):
        subject = f"durable {i:03d}"
        try:
            if smtp is None:
                smtp = smtplib.SMTP(node.address, 25, timeout=30)
                smtp.ehlo("client.outside.test")
            smtp.sendmail("someone@outside.test", [recipient],
                          f"From: someone@outside.test\r\nTo: {recipient}\r\n"
                          f"Subject: {subject}\r\n\r\nmessage {i}\r\n")
            accepted.append(subject)  # sendmail returns only after the 250 to DATA
        except (smtplib.SMTPException, OSError) as err:
            refused.append(f"{subject}: {err}")
            try:
                if smtp is not None:
                    smtp.close()
            finally:
                smtp = None
            time.sleep(0.2)
        if len(accepted) == KILL_AFTER:
            kill_now.set()  # the kill comes while the stream goes on
        time.sleep(0.05)
    if smtp is not None:
        smtp.quit()
    return accepted, refused


def maildir_count(node: Node, local: str) -> int:
    found = node.cli.ssh(node.name, f"find /var/mail/vmail -path '*/{local}/*' -type f "
                                    r"\( -path '*/new/*' -o -path '*/cur/*' \) "
                                    "-exec grep -l '^Subject: durable ' {} + | wc -l")
    return int(found)


def test_sigkill_of_postgresql_during_deliveries_loses_no_accepted_message(node: Node):
    user = node.user("durable")
    local = user.split("@")[0]
    kill_now = threading.Event()
    result: dict = {}
    sender = threading.Thread(target=lambda: result.update(
        zip(("accepted", "refused"), node.run(stream, node, user, kill_now))))
    sender.start()
    try:
        assert kill_now.wait(120), "the stream did not get going"
        version = node.cli.ssh(node.name, "ls /etc/postgresql | sort -n | tail -n 1")
        unit = f"postgresql@{version}-main"
        before = node.cli.ssh(node.name, f"systemctl show -p MainPID --value {unit}")
        node.cli.ssh(node.name, f"systemctl kill --signal=KILL {unit}")
    finally:
        sender.join(300)
    accepted, refused = result["accepted"], result["refused"]
    assert len(accepted) > KILL_AFTER, (accepted, refused)  # the stream went on after the kill
    # systemd brought PostgreSQL back (a new main process), without anyone's help
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = node.cli.ssh(node.name, f"systemctl is-active {unit} || true")
        after = node.cli.ssh(node.name, f"systemctl show -p MainPID --value {unit}")
        if state == "active" and after not in ("0", before):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"{unit} is {state} after the SIGKILL")
    # Postfix retries deferred mail by itself within minutes; the flush only saves the wait
    node.cli.ssh(node.name, "postqueue -f")
    deadline = time.monotonic() + 120
    while (count := maildir_count(node, local)) < len(accepted) and time.monotonic() < deadline:
        time.sleep(2)
        node.cli.ssh(node.name, "postqueue -f")
    queue = node.cli.ssh(node.name, "postqueue -p | tail -n 3")
    assert count == len(accepted), (count, len(accepted), refused, queue)
