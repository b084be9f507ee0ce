-- mailfleet schema, version 2: the role webmail changes passwords with.
-- Roundcube's password plugin may set a mailbox's own password, nothing else: it can read
-- only what its WHERE clause needs and write only the password and its timestamp.
GRANT CONNECT ON DATABASE mailfleet TO mailfleet_password;
GRANT USAGE ON SCHEMA public TO mailfleet_password;
GRANT SELECT (name, active) ON domains TO mailfleet_password;
GRANT SELECT (email, active, system) ON mailboxes TO mailfleet_password;
GRANT UPDATE (password, updated_at) ON mailboxes TO mailfleet_password;
