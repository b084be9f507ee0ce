-- mailfleet schema, version 7: each mailbox's replica, a second mail host holding a copy.
-- The home copies every change to the replica (doveadm sync, two-way, within seconds:
-- templates/dovecot/mailfleet-replicate). Nobody reads or writes the replica's copy but that
-- sync, until the replica becomes the home (a take-over or a move), and the old home, when
-- it is back, becomes the replica and catches up. One mail host: no replica.
ALTER TABLE mailboxes
    ADD COLUMN replica text REFERENCES mail_hosts (name) ON UPDATE CASCADE ON DELETE SET NULL,
    ADD CONSTRAINT mailboxes_replica_not_home CHECK (replica <> home);
CREATE INDEX mailboxes_replica ON mailboxes (replica);

GRANT SELECT (replica) ON mailboxes TO mailfleet_dovecot;

-- Since when a mail host has not answered, as the take-over watch on the primary's host saw
-- it when it took that host's mailboxes over (NULL: up). New homes and replicas avoid it.
ALTER TABLE mail_hosts ADD COLUMN down_since timestamptz;

-- A mailbox gets its home as before (the mail host with the fewest), and a replica: the
-- other mail host with the fewest replicas (by name on a tie); a host that is down comes
-- last for both. When its home changes to its replica (a take-over), the old home becomes
-- the replica, so it catches up when it is back.
CREATE OR REPLACE FUNCTION mailboxes_home() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.home IS NULL THEN
        SELECT h.name INTO NEW.home FROM mail_hosts h
        ORDER BY h.down_since IS NOT NULL,
                 (SELECT count(*) FROM mailboxes m WHERE m.home = h.name), h.name
        LIMIT 1;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.replica = NEW.home AND OLD.home IS DISTINCT FROM NEW.home THEN
        NEW.replica := OLD.home;
    END IF;
    IF NEW.replica IS NULL AND NEW.home IS NOT NULL THEN
        SELECT h.name INTO NEW.replica FROM mail_hosts h WHERE h.name <> NEW.home
        ORDER BY h.down_since IS NOT NULL,
                 (SELECT count(*) FROM mailboxes m WHERE m.replica = h.name), h.name
        LIMIT 1;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER mailboxes_home ON mailboxes;
CREATE TRIGGER mailboxes_home BEFORE INSERT OR UPDATE OF home, replica ON mailboxes
    FOR EACH ROW EXECUTE FUNCTION mailboxes_home();

-- The mailboxes there are: each gets its replica now.
UPDATE mailboxes SET replica = NULL WHERE home IS NOT NULL;
