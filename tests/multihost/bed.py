"""A multi-host test bed on one machine: network namespaces on a bridge, each one a "host" with its own name.

legampi runs as one MPI job over many cluster nodes. A Linux network namespace has its own interfaces,
TCP ports, loopback and abstract Unix sockets, and a UTS namespace its own host name (what
`socket.gethostname()` returns), while the filesystem and the process table stay shared, as a
cluster's parallel filesystem is. So ranks in different namespaces talk over a real (virtual) network,
report different hosts, and still read and write the same workspace.

Bed number N (prefix ``lmhN``, N = 1..99, the lowest free one) creates:

    bridge  lmhN-br   10.254.N.1/24 in the root namespace (mpiexec's -localhost, slurmctld, the
                      PostgreSQL forward listen here)
    host I  lmhN-hI   network namespace /run/netns/lmhN-hI; its eth0 (10.254.N.(10+I)/24) is one end
                      of a veth pair whose other end, lmhN-hI in the root namespace, is on the bridge;
                      UTS namespace bound on /run/legampi-multihost/lmhN/lmhN-hI.uts, hostname lmhN-hI
    state   /run/legampi-multihost/lmhN/ (state.json: owner pid, hosts, pids of root-side daemons;
            the multi-node Slurm's config, spool and logs)

There is no default route in the namespaces: traffic only ever goes to addresses this bed created.
Commands run "on" a host through `nsenter --net --uts` (`Bed.enter`, tests/multihost/enter.sh), which
leaves the mount namespace alone: `ip netns exec` would remount /sys and hide the cgroup tree.

Teardown (`Bed.down`, `teardown`) is idempotent and also cleans up after a crash: it kills every process
whose network namespace is one of the bed's (found through /proc/PID/ns/net, so only processes inside
namespaces this bed created) and the root-side daemons it recorded (pid + start time), deletes the
links, namespaces and UTS bindings, and removes the state folder. `teardown_stale()` does that for
beds whose owner process is gone. CLI: ``python -m tests.multihost.bed up|down|list`` (see main()).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ENTER = HERE / "enter.sh"
FORWARD = HERE / "tcpforward.py"
STATE_ROOT = Path("/run/legampi-multihost")
NETNS_DIR = Path("/run/netns")
BASE = "lmh"
SUBNET = "10.254.{n}.0/24"
MAX_BEDS = 99
REQUIRED = ("ip", "nsenter", "unshare", "mount", "umount")


_REACH = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[1])
for addr in sys.argv[2:]:
    while True:
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect((addr, 9))
            break
        except ConnectionRefusedError:
            break
        except OSError:
            if time.monotonic() > deadline:
                print(addr)
                sys.exit(1)
            time.sleep(0.02)
        finally:
            s.close()
"""


class BedError(RuntimeError):
    """The bed could not be created (missing tools, no privileges) or a command on it failed."""


def _run(cmd: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise BedError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def missing_tools() -> list[str]:
    """The commands the bed needs that are not installed (iproute2, util-linux)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [t for t in REQUIRED if shutil.which(t, path=path) is None]


def why_not() -> str | None:
    """Why no bed can be made here (for a test's skip reason), or None if it can."""
    if os.geteuid() != 0:
        return "the multi-host bed needs root (network namespaces, veth, bridge)"
    missing = missing_tools()
    if missing:
        return f"missing commands {', '.join(missing)} (apt-get install iproute2 util-linux)"
    return None


# ---------------------------------------------------------------------- processes
def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): tells a pid from a recycled one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(pid: int, started: int | None = None) -> bool:
    """Is PID running (not a zombie), and if STARTED is given, the same process that was recorded?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(NETNS_DIR / name).st_ino
    except OSError:
        return None


def pids_in_netns(inodes: set[int]) -> list[int]:
    """Every process whose network namespace is one of INODES."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            link = os.readlink(d / "ns" / "net")
        except OSError:
            continue
        if link.startswith("net:[") and int(link[5:-1]) in inodes:
            out.append(int(d.name))
    return out


def _stop(victims: list[tuple[int, int | None]], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is left after GRACE seconds (each pid checked against its start time)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, started in victims:
            if alive(pid, started):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p, s) for p, s in victims):
            time.sleep(0.02)
        victims = [(p, s) for p, s in victims if alive(p, s)]
        if not victims:
            return


# ---------------------------------------------------------------------- the bed
@dataclass(frozen=True)
class Host:
    """One namespace "host": its name (netns name = host name = root-side veth name) and address."""

    name: str
    addr: str
    uts: Path

    @property
    def netns(self) -> Path:
        return NETNS_DIR / self.name


@dataclass
class Bed:
    """A running bed; create with `Bed.up`, remove with `down` (or the `bed` context manager)."""

    index: int
    hosts: list[Host]
    state: Path = field(repr=False)

    @property
    def prefix(self) -> str:
        return f"{BASE}{self.index}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace: reachable from every host of the bed."""
        return str(ipaddress.ip_network(SUBNET.format(n=self.index)).network_address + 1)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def host(self, name_or_number: str | int) -> Host:
        """A host by name or by its 1-based number."""
        for i, h in enumerate(self.hosts, 1):
            if name_or_number in (h.name, i):
                return h
        raise KeyError(name_or_number)

    # ------------------------------------------------------------------ create
    @classmethod
    def up(cls, n_hosts: int = 3, owner: int | None = None) -> Bed:
        """Create a bed of N_HOSTS hosts. OWNER (default: this process) is the pid whose death makes the
        bed stale for `teardown_stale`; 0 means it stays until `down` (the CLI's `up`)."""
        problem = why_not()
        if problem:
            raise BedError(problem)
        teardown_stale()
        index, state = _reserve()
        owner = os.getpid() if owner is None else owner
        prefix = f"{BASE}{index}"
        net = ipaddress.ip_network(SUBNET.format(n=index))
        hosts = [
            Host(f"{prefix}-h{i}", str(net.network_address + 10 + i), state / f"{prefix}-h{i}.uts")
            for i in range(1, n_hosts + 1)
        ]
        bed = cls(index, hosts, state)
        record: dict[str, Any] = {"index": index, "owner": owner, "owner_start": start_time(owner) if owner else None}
        record.update(hosts=[h.name for h in hosts], pids=[])
        bed._write(record)
        try:
            bed._create()
        except BaseException:
            bed.down()
            raise
        return bed

    def _create(self) -> None:
        ip = "ip"
        _run([ip, "link", "add", self.bridge, "type", "bridge"])
        _run([ip, "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _run([ip, "link", "set", self.bridge, "up"])
        for h in self.hosts:
            _run([ip, "netns", "add", h.name])
            peer = f"{h.name}-p"
            _run([ip, "link", "add", h.name, "type", "veth", "peer", "name", peer])
            _run([ip, "link", "set", peer, "netns", h.name])
            _run([ip, "link", "set", h.name, "master", self.bridge])
            _run([ip, "link", "set", h.name, "up"])
            inside = [ip, "-n", h.name]
            _run([*inside, "link", "set", peer, "name", "eth0"])
            _run([*inside, "addr", "add", f"{h.addr}/24", "dev", "eth0"])
            _run([*inside, "link", "set", "eth0", "up"])
            _run([*inside, "link", "set", "lo", "up"])
            h.uts.touch()
            _run(["unshare", f"--uts={h.uts}", "hostname", h.name])
        for h in self.hosts:  # the network really works before anyone relies on it
            self.wait_reachable(h, [self.gateway, *(o.addr for o in self.hosts)])

    def wait_reachable(self, host: Host, addrs: Sequence[str], timeout: float = 10.0) -> None:
        """Wait until HOST reaches every one of ADDRS: a TCP connect to port 9 (discard) that is refused or
        accepted proves the packets went both ways (no ping needed)."""
        p = subprocess.run(
            [*self.enter(host), sys.executable, "-c", _REACH, str(timeout), *addrs],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout + 10,
        )
        if p.returncode != 0:
            raise BedError(f"{host.name} cannot reach {p.stdout.strip()}: {p.stderr.strip()}")

    # ------------------------------------------------------------------ use
    def enter(self, host: Host | str | int) -> list[str]:
        """The command prefix that runs a command on HOST: its network and UTS namespaces, nothing else."""
        h = host if isinstance(host, Host) else self.host(host)
        return ["nsenter", f"--net={h.netns}", f"--uts={h.uts}", "--"]

    def run(self, host: Host | str | int, cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        """subprocess.run(CMD) on HOST (text mode, output captured unless overridden)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        return subprocess.run([*self.enter(host), *cmd], **kw)  # type: ignore[call-overload,no-any-return]

    def mpiexec_args(self, hosts: Sequence[str | int] | None = None, slots: int = 1) -> list[str]:
        """mpiexec options that start the ranks on HOSTS (default all), SLOTS per host: rank r runs on
        HOSTS[(r // SLOTS) % len(HOSTS)]. mpiexec itself runs in the root namespace."""
        names = [self.host(h).name for h in hosts] if hosts is not None else self.names
        listing = ",".join(f"{n}:{slots}" if slots > 1 else n for n in names)
        return ["-launcher", "ssh", "-launcher-exec", str(ENTER), "-localhost", self.gateway, "-hosts", listing]

    def keep_pid(self, pid: int, what: str) -> None:
        """Record a root-side process of this bed (a forward, slurmctld) so teardown stops it."""
        record = self._read()
        record["pids"].append({"pid": pid, "start": start_time(pid), "what": what})
        self._write(record)

    def forward(self, target_host: str, target_port: int, name: str = "forward") -> int:
        """Start a TCP forward listening on the gateway (reachable from every host) to TARGET in the root
        namespace; returns its port. Used for PostgreSQL, which listens on the root's loopback only."""
        p = subprocess.Popen(
            [sys.executable, str(FORWARD), self.gateway, "0", target_host, str(target_port)],
            stdout=subprocess.PIPE,
            stderr=open(self.state / f"{name}.log", "w"),  # the child owns it
            text=True,
            start_new_session=True,
        )
        self.keep_pid(p.pid, name)
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if not line.isdigit():
            raise BedError(f"forward did not start: {line!r} {(self.state / f'{name}.log').read_text()}")
        return int(line)

    def ps(self) -> str:
        """Every process on the bed's hosts: host, pid, state, kernel wait channel, command (for failure
        messages: where a hung job waits)."""
        inodes = {i: h.name for h in self.hosts if (i := netns_inode(h.name)) is not None}
        out = []
        for pid in sorted(pids_in_netns(set(inodes))):
            try:
                inode = int(os.readlink(f"/proc/{pid}/ns/net")[5:-1])
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = Path(f"/proc/{pid}/wchan").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                continue
            out.append(f"{inodes.get(inode, '?')} {pid} {state} {wchan or '-'} {cmd[:160]}")
        return "\n".join(out)

    # ------------------------------------------------------------------ remove
    def down(self) -> list[str]:
        """Remove everything this bed created; returns the problems met (empty when clean)."""
        return teardown(self.index)

    def _read(self) -> dict[str, Any]:
        return json.loads((self.state / "state.json").read_text())

    def _write(self, record: dict[str, Any]) -> None:
        tmp = self.state / "state.json.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, self.state / "state.json")


def _route_in_use(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Does the root namespace already have an address or route overlapping NET (not ours to take)?"""
    p = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout + _run(["ip", "-4", "route"], check=False).stdout
    for token in p.split():
        with contextlib.suppress(ValueError):
            if "/" in token or token.count(".") == 3:
                if ipaddress.ip_network(token, strict=False).overlaps(net):
                    return True
    return False


def _reserve() -> tuple[int, Path]:
    """The lowest free bed number, reserved atomically by creating its state folder."""
    STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    for n in range(1, MAX_BEDS + 1):
        prefix = f"{BASE}{n}"
        if netns_inode(f"{prefix}-h1") is not None or Path(f"/sys/class/net/{prefix}-br").exists():
            continue  # debris of a bed without state: `down --all` removes it
        if _route_in_use(ipaddress.ip_network(SUBNET.format(n=n))):
            continue
        try:
            (STATE_ROOT / prefix).mkdir(mode=0o755)
        except FileExistsError:
            continue
        return n, STATE_ROOT / prefix
    raise BedError(f"no free bed number in 1..{MAX_BEDS} (python -m tests.multihost.bed down --all)")


def teardown(index: int) -> list[str]:
    """Remove bed INDEX: processes in its namespaces and its recorded daemons, links, namespaces, UTS
    bindings, state. Idempotent; works from any process and after a crash (found by name)."""
    prefix = f"{BASE}{index}"
    state = STATE_ROOT / prefix
    problems: list[str] = []
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((state / "state.json").read_text())
    names = set(record.get("hosts", []))
    names |= {p.name for p in NETNS_DIR.glob(f"{prefix}-h*")} if NETNS_DIR.is_dir() else set()
    inodes = {i for n in names if (i := netns_inode(n)) is not None}
    victims = [(p, start_time(p)) for p in pids_in_netns(inodes)]
    victims += [(r["pid"], r["start"]) for r in record.get("pids", []) if alive(r["pid"], r["start"])]
    _stop(victims)
    left = [p for p, s in victims if alive(p, s)]
    if left:
        problems.append(f"processes still running: {left}")
    links = [p.name for p in Path("/sys/class/net").glob(f"{prefix}-*")]
    for link in sorted(links, key=lambda n: n.endswith("-br")):  # veths first, then the bridge
        p = _run(["ip", "link", "del", link], check=False)
        if p.returncode != 0 and Path(f"/sys/class/net/{link}").exists():
            problems.append(f"ip link del {link}: {p.stderr.strip()}")
    for n in sorted(names):
        if (NETNS_DIR / n).exists():
            p = _run(["ip", "netns", "del", n], check=False)
            if p.returncode != 0:
                problems.append(f"ip netns del {n}: {p.stderr.strip()}")
    if state.is_dir():
        for uts in state.glob("*.uts"):
            _run(["umount", str(uts)], check=False)  # not mounted (a crash before unshare) is fine
        try:
            shutil.rmtree(state)
        except OSError as exc:
            problems.append(f"rm {state}: {exc}")
    return problems


def existing() -> list[int]:
    """Numbers of every bed on this machine: state folders, namespaces or links named lmhN-*."""
    found: set[int] = set()
    names = [p.name for p in STATE_ROOT.glob(f"{BASE}*")] if STATE_ROOT.is_dir() else []
    names += [p.name for p in NETNS_DIR.glob(f"{BASE}*")] if NETNS_DIR.is_dir() else []
    names += [p.name for p in Path("/sys/class/net").glob(f"{BASE}*")]
    for n in names:
        head = n[len(BASE) :].split("-", 1)[0]
        if head.isdigit():
            found.add(int(head))
    return sorted(found)


def teardown_stale() -> list[int]:
    """Remove beds whose owner process is gone (a test run that crashed); returns their numbers."""
    removed = []
    for n in existing():
        try:
            record = json.loads((STATE_ROOT / f"{BASE}{n}" / "state.json").read_text())
        except (OSError, ValueError):
            record = None
        if record is None:
            # no state: a bed being created right now has its state written first, so this is debris,
            # unless its folder was made a moment ago (created but not yet written)
            folder = STATE_ROOT / f"{BASE}{n}"
            if folder.is_dir() and time.time() - folder.stat().st_mtime < 30:
                continue
        elif not record.get("owner") or alive(record["owner"], record.get("owner_start")):
            continue
        teardown(n)
        removed.append(n)
    return removed


@contextlib.contextmanager
def bed(n_hosts: int = 3) -> Iterator[Bed]:
    """A bed for the duration of a with-block, removed however the block ends."""
    b = Bed.up(n_hosts)
    try:
        yield b
    finally:
        problems = b.down()
        if problems:
            raise BedError("teardown left: " + "; ".join(problems))


def main(argv: Sequence[str] | None = None) -> int:
    """`up [-n HOSTS]` creates a bed that stays until `down N` (prints its hosts and the mpiexec options);
    `down N...|--all` removes beds; `list` shows them."""
    ap = argparse.ArgumentParser(prog="python -m tests.multihost.bed", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("-n", "--hosts", type=int, default=3)
    down = sub.add_parser("down")
    down.add_argument("index", nargs="*", type=int)
    down.add_argument("--all", action="store_true")
    sub.add_parser("list")
    a = ap.parse_args(argv)
    if a.cmd == "up":
        b = Bed.up(a.hosts, owner=0)
        print(f"bed {b.index}: gateway {b.gateway}")
        for h in b.hosts:
            print(f"  {h.name} {h.addr}   run: {' '.join(b.enter(h))} CMD")
        print(f"mpiexec {' '.join(b.mpiexec_args())} -n N CMD")
        print(f"remove: python -m tests.multihost.bed down {b.index}")
        return 0
    if a.cmd == "list":
        for n in existing():
            state = STATE_ROOT / f"{BASE}{n}" / "state.json"
            print(n, state.read_text().replace("\n", " ") if state.exists() else "(no state: debris)")
        return 0
    rc = 0
    for n in existing() if a.all else a.index:
        for problem in teardown(n):
            print(f"bed {n}: {problem}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
