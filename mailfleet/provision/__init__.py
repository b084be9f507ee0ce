"""Servers made through a provider's API for `[[hosts]]` entries (issue 26, being built):
the cloud-init user-data that gives a new server mailfleet's deploy key and SSH host key, so
the very first connection to it is verified."""
