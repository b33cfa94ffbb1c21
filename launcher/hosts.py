"""A domain of separate hosts on one machine: every node, and the control host, is its
own network namespace with its own address on one bridge.

The lab (`DIR/lab.json`, written by `cosfail init-demo --hosts`) names each host's
namespace and address. Addresses come from 198.18.0.0/15 (RFC 2544's benchmarking
range), one /24 per domain; namespaces get no route but their /24, and this machine's
side of the bridge has the subnet's last address, so that the operator (and the tests)
reach every host while no host reaches anything beyond the bridge. Everything the lab
makes is named from its tag (`cf<tag>-<host>` namespaces, `cf<tag>br` bridge, `cf<tag>v<i>`
veth ends), so `down` finds and removes it all by name, even when the process that
made it was killed and recorded nothing.

Partitions are blackhole routes inside a host's namespace: `cut(a, b)` makes a's
packets to b vanish (one way), `cut(a, b, both=True)` also b's to a.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cosfail.cosprint.errors import CosfailError
from cosfail.cosprint.fsutil import atomic_write_bytes

LAB_FILE = "lab.json"
CONTROL = "control"
RANGE = ipaddress.ip_network("198.18.0.0/15")
PREFIX = "cf"


class LabError(CosfailError):
    """A lab's hosts could not be made or found."""


@dataclass(frozen=True)
class Host:
    name: str  # a node's name, or "control"
    netns: str
    address: str
    veth: str  # the bridge's end of the host's link (its own end is eth0)


@dataclass(frozen=True)
class Lab:
    tag: str
    subnet: str
    gateway: str  # this machine's address on the bridge
    bridge: str
    hosts: dict[str, Host]

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise LabError(f"lab {self.tag}: no host {name!r} "
                             f"(hosts: {', '.join(self.hosts)})") from None

    def netns_exec(self, name: str) -> list[str]:
        """The prefix that runs a command on host `name`."""
        return ["ip", "netns", "exec", self.host(name).netns]

    def save(self, path: Path) -> None:
        body = {"tag": self.tag, "subnet": self.subnet, "gateway": self.gateway,
                "bridge": self.bridge, "hosts": {n: asdict(h) for n, h in self.hosts.items()}}
        atomic_write_bytes(path, (json.dumps(body, indent=1) + "\n").encode())


def plan_lab(key: str, names: list[str]) -> Lab:
    """The lab of hosts `names` (the control host first), its tag and /24 drawn from
    `key` (the domain's directory): two domains on one machine get different ones."""
    digest = hashlib.sha256(key.encode()).digest()
    tag = digest[:3].hex()
    subnets = list(RANGE.subnets(new_prefix=24))
    subnet = subnets[int.from_bytes(digest[3:5], "big") % len(subnets)]
    addresses = list(subnet.hosts())
    if len(names) > len(addresses) - 1:
        raise LabError(f"a lab holds at most {len(addresses) - 1} hosts, not {len(names)}")
    hosts = {name: Host(name, f"{PREFIX}{tag}-{name}", str(addresses[i]), f"{PREFIX}{tag}v{i}")
             for i, name in enumerate(names)}
    return Lab(tag, str(subnet), str(addresses[-1]), f"{PREFIX}{tag}br", hosts)


def load_lab(directory: Path) -> Lab | None:
    """The lab of the domain in `directory`, or None for a loopback domain."""
    try:
        data = json.loads((directory / LAB_FILE).read_text())
    except FileNotFoundError:
        return None
    return Lab(data["tag"], data["subnet"], data["gateway"], data["bridge"],
               {n: Host(**h) for n, h in data["hosts"].items()})


# ----- effects: ip(8) ----------------------------------------------------------------

def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabError(f"{what} needs root (network namespaces); run it as root, or use a "
                         "loopback domain (init-demo without --hosts)")


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)  # noqa: S603
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done


def existing_netns(tag: str) -> list[str]:
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(f"{PREFIX}{tag}-")]


def _links(prefix: str) -> list[str]:
    out = _ip("-o", "link", "show").stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def up(lab: Lab) -> None:
    """Make the bridge and every host's namespace, link and address (idempotent)."""
    require_root("a domain of separate hosts")
    # While any lab is up, no packet for the range leaves this machine: an address of a
    # lab that is down (a host not made yet, a client started early) goes nowhere.
    _ip("route", "replace", "blackhole", str(RANGE))
    if lab.bridge not in _links(lab.bridge):
        _ip("link", "add", lab.bridge, "type", "bridge")
        _ip("addr", "add", f"{lab.gateway}/24", "dev", lab.bridge)
    _ip("link", "set", lab.bridge, "up")
    present = set(existing_netns(lab.tag))
    prefix_len = ipaddress.ip_network(lab.subnet).prefixlen
    for host in lab.hosts.values():
        if host.netns not in present:
            _ip("netns", "add", host.netns)
        if not _links(host.veth):
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)
        _ip("link", "set", host.veth, "master", lab.bridge, "up")
        _ip("link", "set", "lo", "up", ns=host.netns)
        addrs = _ip("-o", "addr", "show", "dev", "eth0", ns=host.netns).stdout
        if f" {host.address}/" not in addrs:
            _ip("addr", "add", f"{host.address}/{prefix_len}", "dev", "eth0", ns=host.netns)
        _ip("link", "set", "eth0", "up", ns=host.netns)


def down(tag: str) -> list[str]:
    """Kill every process in the lab's namespaces, then remove the namespaces, their
    links and the bridge; returns what it removed. Safe to run again, and after a crash."""
    removed = []
    for ns in existing_netns(tag):
        _kill_all_in(ns)
        _ip("netns", "delete", ns)
        removed.append(f"netns {ns}")
    for link in _links(f"{PREFIX}{tag}"):  # the veths went with their peers; the bridge
        if _ip("link", "delete", link, check=False).returncode == 0:
            removed.append(f"link {link}")
    if not [n for n in _links(PREFIX) if n.endswith("br")]:  # the last lab is gone
        _ip("route", "del", "blackhole", str(RANGE), check=False)
    return removed


def _kill_all_in(ns: str, timeout: float = 10.0) -> None:
    def pids() -> list[int]:
        return [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]

    for pid in pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids() and time.monotonic() < deadline:
        for pid in pids():
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.02)


# ----- partitions --------------------------------------------------------------------

def cut(lab: Lab, a: str, b: str, both: bool = False) -> None:
    """Host a's packets to host b vanish (and b's to a, with `both`)."""
    for src, dst in [(a, b), (b, a)][: 2 if both else 1]:
        routes = _ip("route", "show", "type", "blackhole", ns=lab.host(src).netns).stdout
        if lab.host(dst).address not in routes.split():
            _ip("route", "add", "blackhole", f"{lab.host(dst).address}/32",
                ns=lab.host(src).netns)


def heal(lab: Lab, a: str, b: str, both: bool = False) -> None:
    for src, dst in [(a, b), (b, a)][: 2 if both else 1]:
        _ip("route", "del", "blackhole", f"{lab.host(dst).address}/32",
            ns=lab.host(src).netns, check=False)


def heal_all(lab: Lab) -> None:
    for host in lab.hosts.values():
        _ip("route", "flush", "type", "blackhole", ns=host.netns, check=False)


HOST_PORT = 6310  # every node's cosprintd, on its own address
LAB_POSTGRES_PORT = 5432


def write_host_keys(directory: Path, lab: Lab, nodes: list[str]) -> None:
    """Every host's SSH material in its own `~/.ssh`: a user key (the control host's
    too: it fences over SSH), a node's sshd host key, `authorized_keys` holding every
    host's user key and `known_hosts` holding every node's host key."""
    homes = {name: directory / "hosts" / name for name in lab.hosts}
    for name, home in homes.items():
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = [("id_ed25519", f"{name} user")] + (
            [("host_ed25519", f"{name} host")] if name in nodes else [])
        for key, comment in keys:
            if not (ssh / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",  # noqa: S603, S607
                                "-C", comment, "-f", str(ssh / key)], check=True, timeout=30)
    users = "".join((h / ".ssh" / "id_ed25519.pub").read_text() for h in homes.values())
    known = "".join(f"{lab.host(n).address} {_public_key(homes[n] / '.ssh/host_ed25519.pub')}\n"
                    for n in nodes)
    for name, home in homes.items():
        ssh = home / ".ssh"
        atomic_write_bytes(ssh / "authorized_keys", users.encode())
        atomic_write_bytes(ssh / "known_hosts", known.encode())
        if name in nodes:
            atomic_write_bytes(ssh / "sshd_config", sshd_config(
                lab.host(name).address, 22, ssh / "host_ed25519", ssh / "authorized_keys",
                ssh / "sshd.pid").encode())


def _public_key(pub: Path) -> str:
    """`kind base64` of a .pub file, without its comment."""
    return " ".join(pub.read_text().split()[:2])


def sshd_config(address: str, port: int, host_key: Path, authorized_keys: Path,
                pidfile: Path) -> str:
    """An sshd that lets root in by key only, from `authorized_keys`, and serves SFTP."""
    return "\n".join([
        f"Port {port}",
        f"ListenAddress {address}",
        f"HostKey {host_key}",
        f"PidFile {pidfile}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "Subsystem sftp internal-sftp",
        "MaxStartups 100",
        "",
    ])
