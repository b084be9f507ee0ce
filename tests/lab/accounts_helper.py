"""Creates test accounts through mailfleet's database layer (psycopg over the SSH tunnel),
in its own process because the engine needs gevent's monkey patching first.

usage: accounts_helper.py CONFIG HOST mailbox EMAIL PASSWORD [QUOTA_BYTES]
       accounts_helper.py CONFIG HOST alias SOURCE DESTINATION
       accounts_helper.py CONFIG HOST raw-mailbox EMAIL PASSWORD
         (inserted without mailfleet's address rules, as an older database may hold it)
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from mailfleet.accounts import db, store  # noqa: E402
from mailfleet.accounts.passwords import hash_password  # noqa: E402
from mailfleet.config import load  # noqa: E402


def main() -> None:
    config_path, host, action, *args = sys.argv[1:]
    config = load(Path(config_path))
    with db.connect(config.select_hosts([host])[0]) as conn:
        if action == "mailbox":
            quota = int(args[2]) if len(args) > 2 else None
            store.set_mailbox(conn, args[0], args[1], quota_bytes=quota)
        elif action == "raw-mailbox":
            store.add_mailbox(conn, args[0], hash_password(args[1]))
        elif action == "alias":
            store.add_alias(conn, args[0], args[1])
        else:
            raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main()
