-- mailfleet schema, version 3: the accounts as SOGo reads them.
-- SOGo's SQL user source wants one table or view with fixed column names. This view shows
-- the active, non-system mailboxes of active domains; the login (c_uid) is the mail address.
-- It is a simple view, so PostgreSQL lets SOGo's password change UPDATE c_password: the
-- role may write nothing else, and the mailboxes table keeps its {SCHEME} check.
CREATE VIEW sogo_users AS
    SELECT email AS c_uid,
           email AS c_name,
           password AS c_password,
           CASE WHEN name = '' THEN email ELSE name END AS c_cn,
           email AS mail
    FROM mailboxes
    WHERE active AND NOT system
      AND domain IN (SELECT name FROM domains WHERE active);

GRANT CONNECT ON DATABASE mailfleet TO mailfleet_sogo;
GRANT USAGE ON SCHEMA public TO mailfleet_sogo;
GRANT SELECT (name, active) ON domains TO mailfleet_sogo;
GRANT SELECT ON sogo_users TO mailfleet_sogo;
GRANT UPDATE (c_password) ON sogo_users TO mailfleet_sogo;

-- A password change through the view (or any other way) dates the mailbox.
CREATE FUNCTION mailboxes_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER mailboxes_password_changed BEFORE UPDATE OF password ON mailboxes
    FOR EACH ROW WHEN (OLD.password IS DISTINCT FROM NEW.password)
    EXECUTE FUNCTION mailboxes_touch();
