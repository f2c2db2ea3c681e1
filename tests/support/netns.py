"""Hosts as Linux network namespaces (needs root: `ip netns`, `unshare`), joined to this one by veth pairs.

Each host has its own network stack, its own address (10.N.i.2, this namespace being 10.N.i.1 on that link) and
its own host name (a UTS namespace per process), so processes started in it look like another machine to the
node: another `socket.gethostname()`, another pid space for `process_exists` judgements, TCP through a link that
`cut()` takes down and `restore()` brings back. The file system is shared (the NFS-like shared data directory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True)
    return probe.returncode == 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Host:
    name: str  # the namespace, and the host name its processes see
    address: str  # its address
    gateway: str  # this namespace's address on the link to it (where PostgreSQL and Orthanc are reached)
    link: str  # the veth end in this namespace

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host: its network namespace, its own UTS namespace named after it."""
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "sh", "-c",
                f'hostname {self.name} && exec "$@"', "sh", *argv]

    def cut(self) -> None:
        """Take the host's link down: established connections hang, new ones fail (a partition)."""
        _ip("link", "set", self.link, "down")

    def restore(self) -> None:
        _ip("link", "set", self.link, "up")


@contextmanager
def hosts(count: int) -> Iterator[tuple[list[Host], str]]:
    """`count` hosts; yields them and the network (CIDR) that holds all their links. Removed at the end."""
    tag = os.getpid() % 10000
    second = 100 + os.getpid() % 100
    made: list[Host] = []
    try:
        for index in range(count):
            name, link = f"dai{tag}h{index}", f"dai{tag}v{index}"
            host = Host(name, f"10.{second}.{index}.2", f"10.{second}.{index}.1", link)
            _ip("netns", "add", name)
            made.append(host)
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("addr", "add", f"{host.gateway}/24", "dev", link)
            _ip("link", "set", link, "up")
            _ip("-n", name, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield made, f"10.{second}.0.0/16"
    finally:
        for host in made:
            subprocess.run(["ip", "netns", "delete", host.name], capture_output=True, timeout=30)
            subprocess.run(["ip", "link", "delete", host.link], capture_output=True, timeout=30)
