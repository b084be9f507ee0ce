-- mailfleet schema, version 4: webmail changes passwords only through one function.
-- Before, mailfleet_password (Roundcube) could UPDATE the password of any row of mailboxes
-- (system and disabled ones too) to any string, and mailfleet_sogo any row of its view.
-- Neither webmail hands the database a proof of the old password that SQL could check:
-- SOGo sends only the new hash, and the hashes are {ARGON2ID}, which pgcrypto cannot
-- verify. So what a role holding these passwords can still do is set the password of any
-- active user mailbox (take it over); this function narrows the rest:
--   * only active, non-system mailboxes of active domains;
--   * only an {ARGON2ID} hash with at least mailfleet's cost (no {PLAIN}, no cheap hash);
--   * at most 3 changes per mailbox per hour, and 30 per 15 minutes in all, so a stolen
--     webmail password cannot take over every mailbox at once;
--   * every change is recorded in password_changes (which role, when), for the admin.
-- `mailfleet user passwd` (mailfleet_admin) is not limited.

CREATE TABLE password_changes (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL,
    -- the database role that asked: mailfleet_password (Roundcube) or mailfleet_sogo
    changed_by  text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_changes_at ON password_changes (changed_at);
CREATE INDEX password_changes_email ON password_changes (email, changed_at);

CREATE FUNCTION webmail_set_password(login text, new_hash text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    address text := lower(login);
    cost text[];
BEGIN
    -- {ARGON2ID} (Roundcube) or {argon2id} (SOGo), as PHP and libsodium write it
    cost := regexp_match(new_hash, '^\{ARGON2ID\}\$argon2id\$v=19\$m=([0-9]{1,8}),t=([0-9]{1,4}),'
                                   'p=([0-9]{1,3})\$[A-Za-z0-9+/]{16,}\$[A-Za-z0-9+/]{32,}$', 'i');
    -- 19 MiB and 2 passes: mailfleet's own parameters, the least OWASP recommends
    IF cost IS NULL OR cost[1]::integer < 19456 OR cost[2]::integer < 2 THEN
        RAISE EXCEPTION 'webmail may store only {ARGON2ID} hashes of at least m=19456,t=2';
    END IF;
    PERFORM 1 FROM mailboxes m JOIN domains d ON d.name = m.domain
        WHERE m.email = address AND m.active AND NOT m.system AND d.active
        FOR UPDATE OF m;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no active user mailbox %', address;
    END IF;
    -- one change at a time, so concurrent callers cannot all pass the limits below
    LOCK TABLE password_changes IN SHARE ROW EXCLUSIVE MODE;
    IF (SELECT count(*) FROM password_changes
        WHERE email = address AND changed_at > now() - interval '1 hour') >= 3 THEN
        RAISE EXCEPTION 'password of % changed 3 times in the last hour: try later', address;
    END IF;
    IF (SELECT count(*) FROM password_changes
        WHERE changed_at > now() - interval '15 minutes') >= 30 THEN
        RAISE EXCEPTION '30 webmail password changes in 15 minutes: try later';
    END IF;
    UPDATE mailboxes SET password = new_hash WHERE email = address;
    INSERT INTO password_changes (email, changed_by) VALUES (address, session_user);
    RETURN true;
END $$;
REVOKE ALL ON FUNCTION webmail_set_password(text, text) FROM PUBLIC;

-- Roundcube: no direct access to the tables any more, only the function.
REVOKE UPDATE (password, updated_at) ON mailboxes FROM mailfleet_password;
REVOKE SELECT (email, active, system) ON mailboxes FROM mailfleet_password;
REVOKE SELECT (name, active) ON domains FROM mailfleet_password;
GRANT EXECUTE ON FUNCTION webmail_set_password(text, text) TO mailfleet_password;

-- SOGo runs `UPDATE sogo_users SET c_password = ... WHERE c_uid = ...`: the view's update
-- goes through the same function instead of writing the table.
CREATE FUNCTION sogo_users_update() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    IF NEW.c_password IS DISTINCT FROM OLD.c_password THEN
        PERFORM webmail_set_password(OLD.c_uid, NEW.c_password);
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION sogo_users_update() FROM PUBLIC;
CREATE TRIGGER sogo_users_password INSTEAD OF UPDATE ON sogo_users
    FOR EACH ROW EXECUTE FUNCTION sogo_users_update();
GRANT EXECUTE ON FUNCTION webmail_set_password(text, text) TO mailfleet_sogo;

GRANT SELECT ON password_changes TO mailfleet_admin;
