-- mailfleet schema, version 6: where each mailbox lives when a cluster has several mail hosts.
-- Every mail host accepts mail and logins for every user; Dovecot there serves a mailbox
-- whose home is itself and proxies the others to their home's address (docs/cluster.md).
-- `deploy` keeps mail_hosts equal to the config's mail hosts. A mailbox without a home (a
-- single host, or one from before this version) lives on the only mail host.
CREATE TABLE mail_hosts (
    name     text PRIMARY KEY CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    -- where the other mail hosts reach it (its VPN address)
    address  inet NOT NULL
);

ALTER TABLE mailboxes ADD COLUMN home text REFERENCES mail_hosts (name) ON UPDATE CASCADE;
CREATE INDEX mailboxes_home ON mailboxes (home);

GRANT SELECT ON mail_hosts TO mailfleet_dovecot, mailfleet_admin;
GRANT SELECT (home) ON mailboxes TO mailfleet_dovecot;

-- A new mailbox without a home gets the mail host with the fewest mailboxes (by name on a
-- tie): `user add`, `user import` and the webmail all insert through here. No mail host
-- listed (a single host): no home.
CREATE FUNCTION mailboxes_home() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.home IS NULL THEN
        SELECT h.name INTO NEW.home FROM mail_hosts h
        ORDER BY (SELECT count(*) FROM mailboxes m WHERE m.home = h.name), h.name
        LIMIT 1;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER mailboxes_home BEFORE INSERT ON mailboxes
    FOR EACH ROW EXECUTE FUNCTION mailboxes_home();
