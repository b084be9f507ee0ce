-- In a cluster, `mailfleet user ...` returns once every standby replayed the change: the
-- admin role reads how far each standby is (pg_stat_replication's LSN columns).
GRANT pg_read_all_stats TO mailfleet_admin;
