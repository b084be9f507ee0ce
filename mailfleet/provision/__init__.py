"""Servers made through a provider's API for `[[hosts]]` entries (issue 26, being built; no
command uses it yet): one module a provider behind the interface in base.py (hetzner.py on
the official hcloud library; vultr.py and digitalocean.py on Apache libcloud's connections,
libcloud_api.py), and the cloud-init user-data that gives a new server mailfleet's deploy key
and SSH host key, so the very first connection to it is verified (userdata.py)."""
