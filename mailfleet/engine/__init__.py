"""The deploy engine: the only package that drives pyinfra (inventory, connections, facts,
execution). Services add pyinfra operations to a HostContext; they never run anything."""

from mailfleet.engine import snapshot
from mailfleet.engine.operations import config_file, debconf
from mailfleet.engine.runner import DeployReport, Engine, HostContext, HostReport

__all__ = ["DeployReport", "Engine", "HostContext", "HostReport", "config_file", "debconf", "snapshot"]
