"""mailfleet: one config file, one command to deploy a complete mail system on Debian."""

__version__ = "0.1.0"
