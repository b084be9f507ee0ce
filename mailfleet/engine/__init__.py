"""The deploy engine: the only package that drives pyinfra (inventory, connections, facts,
execution). Services add pyinfra operations to a HostContext; they never run anything."""

from mailfleet.engine import snapshot
from mailfleet.engine.context import HostContext
from mailfleet.engine.operations import config_file, debconf
from mailfleet.engine.report import DeployReport, HostReport
from mailfleet.engine.runner import Engine

__all__ = ["DeployReport", "Engine", "HostContext", "HostReport", "config_file", "debconf", "snapshot"]
