"""A test network on one machine: one Linux network namespace per node, joined to a bridge in the root namespace.

    root namespace:  bridge <tag>b  10.213.0.1/24  (the fault proxy and the clients live here)
                       |            |            |
                    veth <tag>v1  <tag>v2     <tag>v3
                       |            |            |
    namespaces:     <tag>n1       <tag>n2      <tag>n3
                    10.213.0.11   10.213.0.12  10.213.0.13   (each node's supervisor and workers bind here)

Node-to-node traffic is sent through the fault proxy in the root namespace: `route_via_proxy` adds a DNAT rule
in the sender's namespace (nat OUTPUT), so the node still connects to the peer's own address and port, but the
packets go to the proxy's port for that (source, destination, channel). Clients in the root namespace talk to
the nodes directly over the bridge.

Partitions are iptables rules in the namespaces, in two chains of our own (SHMR_IN from INPUT, SHMR_OUT from
OUTPUT), so healing is flushing them:

- `block(a, b)`: every connection *a* opened towards *b* (matched by its conntrack original destination, which
  survives the DNAT to the proxy) loses its packets both ways; connections *b* opened towards *a* are untouched.
  shmraft sends on the connections it opens (a node's messages to a peer go out on its own outgoing connection,
  answers come back on the peer's), so this is "a's messages to b are lost, b's messages to a arrive".
- `isolate(n)`: every packet in or out of n's namespace except loopback is dropped (peers and clients).

Every name starts with NAME_PREFIX and the creating process's pid, so a crashed run's namespaces and links are
recognised by `cleanup_stale()` (pid no longer alive) and removed, with any process still inside them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from itertools import count
from typing import Final

import psutil

NAME_PREFIX: Final = "shc"  # namespaces, bridge and veths of a test network: shc<pid><letter>...
NAME_RE: Final = re.compile(rf"^{NAME_PREFIX}(\d+)([a-z])")
# private /24s tried in order; the first that overlaps no address or route of this machine is used
SUBNET_CANDIDATES: Final = (
    "10.213.0.0/24",
    "10.214.0.0/24",
    "10.215.0.0/24",
    "10.216.0.0/24",
    "172.31.213.0/24",
    "192.168.213.0/24",
)
ROOT_HOST_INDEX: Final = 1  # the bridge's address: .1
NODE_HOST_OFFSET: Final = 10  # node n's address: .(10 + n)
CHAIN_IN: Final = "SHMR_IN"
CHAIN_OUT: Final = "SHMR_OUT"
COMMAND_TIMEOUT_S: Final = 15.0
REACH_PROBE_PORT: Final = 9  # "discard": nothing listens there in a fresh namespace
NODES_MAX: Final = 9  # one letter per node in the interface names; interface names are at most 15 characters

_instance = count()


class NetnsError(RuntimeError):
    """An ip/iptables command failed; the message names the command, its exit status and its stderr."""


def run(cmd: list[str], check: bool = True, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a command, raising NetnsError (with stderr) when check and it fails."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(cmd)}: {exc}") from None
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str:
    """Empty when namespaces can be made here; otherwise why not (for a clear message and a test skip)."""
    if os.geteuid() != 0:
        return f"not root (euid {os.geteuid()}): network namespaces need CAP_NET_ADMIN"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt package {package})"
    probe = f"{NAME_PREFIX}{os.getpid()}z"
    try:
        run(["ip", "netns", "add", probe])
    except NetnsError as exc:
        return f"`ip netns add` fails: {exc}"
    try:
        run(["ip", "netns", "exec", probe, "iptables", "-w", "-S"])
    except NetnsError as exc:
        return f"iptables does not work in a namespace: {exc}"
    finally:
        run(["ip", "netns", "del", probe], check=False)
    return ""


def networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network of an address or a route on this machine (root namespace)."""
    nets: list[ipaddress.IPv4Network] = []
    for line in run(["ip", "-4", "-o", "addr", "show"]).stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    for line in run(["ip", "-4", "route", "show", "table", "all"], check=False).stdout.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("local", "broadcast", "unreachable", "prohibit", "blackhole"):
            word = line.split()[1]
        if word == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(word, strict=False))
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    """The first of SUBNET_CANDIDATES that overlaps nothing in use."""
    used = networks_in_use()
    for text in SUBNET_CANDIDATES:
        net = ipaddress.ip_network(text)
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError(f"every candidate subnet {SUBNET_CANDIDATES} overlaps one in use: {[str(u) for u in used]}")


def _owner_alive(name: str) -> bool:
    m = NAME_RE.match(name)
    return bool(m) and psutil.pid_exists(int(m.group(1)))


def _kill_inside(netns: str) -> None:
    pids = run(["ip", "netns", "pids", netns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def list_namespaces() -> list[str]:
    return [
        line.split()[0]
        for line in run(["ip", "netns", "list"], check=False).stdout.splitlines()
        if line.startswith(NAME_PREFIX)
    ]


def list_links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    names = [m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.M)]
    return [n for n in names if n.startswith(NAME_PREFIX)]


def cleanup_stale() -> list[str]:
    """Remove the namespaces and links of test networks whose creating process is dead; returns their names."""
    removed = []
    for ns in list_namespaces():
        if not _owner_alive(ns):
            _kill_inside(ns)
            run(["ip", "netns", "del", ns], check=False)
            removed.append(ns)
    for link in list_links():
        if not _owner_alive(link):
            run(["ip", "link", "del", link], check=False)
            removed.append(link)
    return removed


class TestNetwork:
    """Namespaces n1..nN on a bridge; partitions and proxy routes by iptables. Use as a context manager, or
    create() then destroy() (idempotent; also removes whatever a half-done create() made)."""

    __test__ = False  # not a pytest class

    def __init__(self, node_ids: list[int], subnet: ipaddress.IPv4Network | None = None) -> None:
        if not node_ids or len(node_ids) > NODES_MAX or min(node_ids) < 1 or max(node_ids) > NODES_MAX:
            raise ValueError(f"node_ids: expected 1..{NODES_MAX} ids in 1..{NODES_MAX}, got {node_ids}")
        self.node_ids = list(node_ids)
        self.tag = f"{NAME_PREFIX}{os.getpid()}{chr(ord('a') + next(_instance) % 25)}"
        self.subnet = subnet
        self.bridge = f"{self.tag}b"
        self.created = False

    # --- names and addresses ----------------------------------------------------------------------------------

    def netns(self, node_id: int) -> str:
        return f"{self.tag}n{node_id}"

    def _veth(self, node_id: int) -> tuple[str, str]:
        return f"{self.tag}v{node_id}", f"{self.tag}p{node_id}"

    @property
    def root_ip(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + ROOT_HOST_INDEX)

    def ip(self, node_id: int) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + NODE_HOST_OFFSET + node_id)

    def exec_prefix(self, node_id: int) -> list[str]:
        """Prefix a command with this to run it inside the node's namespace."""
        return ["ip", "netns", "exec", self.netns(node_id)]

    def run_in(self, node_id: int, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.exec_prefix(node_id), *cmd], check=check)

    def iptables(self, node_id: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run_in(node_id, ["iptables", "-w", *args], check=check)

    # --- lifecycle --------------------------------------------------------------------------------------------

    def create(self) -> TestNetwork:
        cleanup_stale()
        if self.subnet is None:
            self.subnet = pick_subnet()
        self.created = True  # from here on destroy() has something to remove
        prefix = self.subnet.prefixlen
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", f"{self.root_ip}/{prefix}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for n in self.node_ids:
            ns = self.netns(n)
            outer, inner = self._veth(n)
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            run(["ip", "link", "set", outer, "master", self.bridge])
            run(["ip", "link", "set", outer, "up"])
            run(["ip", "link", "set", inner, "netns", ns])
            self.run_in(n, ["ip", "addr", "add", f"{self.ip(n)}/{prefix}", "dev", inner])
            self.run_in(n, ["ip", "link", "set", inner, "up"])
            self.run_in(n, ["ip", "link", "set", "lo", "up"])
            for chain, hook in ((CHAIN_IN, "INPUT"), (CHAIN_OUT, "OUTPUT")):
                self.iptables(n, "-N", chain)
                self.iptables(n, "-I", hook, "1", "-j", chain)
        self._wait_reachable()
        return self

    def _wait_reachable(self, timeout_s: float = 10.0) -> None:
        """Until every namespace answers from the root namespace: a TCP connect to a closed port is refused
        (an RST came back), which proves the path works without needing ping."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.node_ids)
        while pending and time.monotonic() < deadline:
            for n in sorted(pending):
                with socket.socket() as s:
                    s.settimeout(1.0)
                    try:
                        s.connect((self.ip(n), REACH_PROBE_PORT))
                    except ConnectionRefusedError:
                        pending.discard(n)
                    except OSError:
                        time.sleep(0.05)
                    else:
                        pending.discard(n)
        if pending:
            raise NetnsError(f"namespaces {sorted(pending)} not reachable from the root namespace in {timeout_s} s")

    def destroy(self) -> None:
        """Kill whatever still runs in the namespaces, delete them and the bridge. Safe to call twice."""
        if not self.created:
            return
        for n in self.node_ids:
            _kill_inside(self.netns(n))
        for n in self.node_ids:
            run(["ip", "netns", "del", self.netns(n)], check=False)
            run(["ip", "link", "del", self._veth(n)[0]], check=False)  # normally gone with the namespace
        run(["ip", "link", "del", self.bridge], check=False)
        self.created = False

    def leftovers(self) -> list[str]:
        """Names of this network still present (empty after destroy())."""
        return [n for n in [*list_namespaces(), *list_links()] if n.startswith(self.tag)]

    def __enter__(self) -> TestNetwork:
        try:
            return self.create()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- routing through the proxy ----------------------------------------------------------------------------

    def route_via_proxy(self, src: int, dst_ip: str, dst_port: int, proxy_port: int) -> None:
        """In src's namespace, connections to dst_ip:dst_port go to root_ip:proxy_port instead."""
        self.iptables(
            src,
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            dst_ip,
            "--dport",
            str(dst_port),
            "-j",
            "DNAT",
            "--to-destination",
            f"{self.root_ip}:{proxy_port}",
        )

    # --- partitions -------------------------------------------------------------------------------------------

    def _add_rules(self, rules: dict[int, list[str]]) -> None:
        """Append rules (iptables -A arguments, filter table) in each namespace, one iptables-restore per
        namespace, so that a partition is in force everywhere within a few milliseconds of each other."""
        for node_id, lines in rules.items():
            text = "*filter\n" + "".join(f"-A {line}\n" for line in lines) + "COMMIT\n"
            cmd = [*self.exec_prefix(node_id), "iptables-restore", "-w", "--noflush"]
            proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            if proc.returncode != 0:
                raise NetnsError(f"{' '.join(cmd)} <<{text!r}: exit {proc.returncode}: {proc.stderr.strip()}")

    @staticmethod
    def _block_rules(dst_ip: str) -> list[str]:
        return [f"{chain} -m conntrack --ctorigdst {dst_ip} -j DROP" for chain in (CHAIN_OUT, CHAIN_IN)]

    def block(self, src: int, dst: int) -> None:
        """Connections src opens towards dst lose every packet (both directions of those connections)."""
        self._add_rules({src: self._block_rules(self.ip(dst))})

    def cut(self, a: int, b: int) -> None:
        """No traffic between a and b either way."""
        self.split([a], among=[a, b])

    def split(self, side: list[int], among: list[int] | None = None) -> None:
        """`side` can reach only itself (among the nodes); the others only themselves. Clients reach everyone."""
        rules: dict[int, list[str]] = {}
        for a in side:
            for b in among or self.node_ids:
                if b not in side:
                    rules.setdefault(a, []).extend(self._block_rules(self.ip(b)))
                    rules.setdefault(b, []).extend(self._block_rules(self.ip(a)))
        self._add_rules(rules)

    def isolate(self, node_id: int) -> None:
        """Every packet in or out of the node's namespace, except loopback, is dropped (peers and clients)."""
        self._add_rules({node_id: [f"{CHAIN_IN} ! -i lo -j DROP", f"{CHAIN_OUT} ! -o lo -j DROP"]})

    def heal(self) -> None:
        """Remove every partition rule (proxy routes stay)."""
        for n in self.node_ids:
            self.iptables(n, "-F", CHAIN_IN, check=False)
            self.iptables(n, "-F", CHAIN_OUT, check=False)

    def rules(self, node_id: int) -> str:
        """The node's partition rules as `iptables -S` prints them (for reports and tests)."""
        return "".join(self.iptables(node_id, "-S", chain, check=False).stdout for chain in (CHAIN_IN, CHAIN_OUT))
