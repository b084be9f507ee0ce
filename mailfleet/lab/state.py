"""What a running lab is: its nodes, helpers, forwards and operator side, as saved in its
state file (the record `down` undoes, and every later command reads)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from mailfleet.lab import network
from mailfleet.lab.paths import RELEASES


@dataclass
class Node:
    name: str
    release: str
    address: str
    ssh_port: int
    pid: int = 0
    boot_seconds: float = 0.0
    cloud: bool = False  # made by cloud-init for `provision` (lab/cloud.py), not by `lab up`

    @property
    def debian(self) -> str:
        return RELEASES[self.release]


@dataclass
class LabState:
    id: str
    gateway: str = network.GATEWAY
    proxy_port: int = 0
    helpers: list[int] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    forwards: dict[str, int] = field(default_factory=dict)  # "n3:53" -> loopback port
    operator: str = ""  # address of the operator namespace, when there is one
    tunnels: list[int] = field(default_factory=list)  # the operator's wireguard-go pids

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        data = json.loads(text)
        data["nodes"] = [Node(**n) for n in data.get("nodes", [])]
        return cls(**data)
