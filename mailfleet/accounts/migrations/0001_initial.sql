-- mailfleet schema, version 1: domains, mailboxes, aliases.
-- Applied by `mailfleet deploy` as the postgres superuser, in one transaction.
-- Addresses are stored in lower case; Postfix and Dovecot look them up lower-cased.

CREATE TABLE domains (
    name        text PRIMARY KEY CHECK (name = lower(name) AND name LIKE '%.%'),
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE mailboxes (
    email        text PRIMARY KEY CHECK (email = lower(email) AND email LIKE '_%@_%'),
    domain       text NOT NULL REFERENCES domains (name) ON UPDATE CASCADE ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    -- a Dovecot hash with its scheme prefix, e.g. {ARGON2ID}$argon2id$v=19$...
    password     text NOT NULL CHECK (password LIKE '{%}%'),
    -- NULL: the default quota from mailfleet.toml
    quota_bytes  bigint CHECK (quota_bytes IS NULL OR quota_bytes > 0),
    active       boolean NOT NULL DEFAULT true,
    -- mailfleet's own health-check mailbox, hidden from user lists
    system       boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (email LIKE '%@' || domain)
);
CREATE INDEX mailboxes_domain ON mailboxes (domain);

-- source is user@domain, or @domain for a catch-all; destination any address, also outside.
CREATE TABLE aliases (
    source       text NOT NULL CHECK (source = lower(source) AND source LIKE '%@_%'),
    domain       text NOT NULL REFERENCES domains (name) ON UPDATE CASCADE ON DELETE CASCADE,
    destination  text NOT NULL CHECK (destination LIKE '_%@_%'),
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, destination),
    CHECK (source LIKE '%@' || domain)
);
CREATE INDEX aliases_domain ON aliases (domain);

-- What Postfix and Dovecot may read: only the columns they need, only active rows.
REVOKE ALL ON DATABASE mailfleet FROM PUBLIC;
GRANT CONNECT ON DATABASE mailfleet TO mailfleet_postfix, mailfleet_dovecot, mailfleet_admin;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO mailfleet_postfix, mailfleet_dovecot, mailfleet_admin;

GRANT SELECT (name, active) ON domains TO mailfleet_postfix, mailfleet_dovecot;
GRANT SELECT (email, domain, active) ON mailboxes TO mailfleet_postfix;
GRANT SELECT (source, domain, destination, active) ON aliases TO mailfleet_postfix;
GRANT SELECT (email, domain, password, quota_bytes, active) ON mailboxes TO mailfleet_dovecot;

GRANT SELECT, INSERT, UPDATE, DELETE ON domains, mailboxes, aliases TO mailfleet_admin;
GRANT SELECT ON schema_migrations TO mailfleet_admin;
