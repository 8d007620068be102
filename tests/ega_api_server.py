"""Stand-in for the EGA metadata API, for tests only.

`GET /elixir/data/metadata/datasets/<DATASET_ID>/files` with HTTP basic auth answers with the JSON
shape and meaning the real API uses: a list of objects with fileId, datasetId, displayFileName,
fileName, fileSize, checksum, checksumType, unencryptedChecksum, unencryptedChecksumType and
fileStatus, where fileSize and checksum/checksumType describe the ENCRYPTED file as transferred and
unencryptedChecksum/unencryptedChecksumType the plaintext. Switches make it answer
5xx (or 429) a given number of times before succeeding, optionally with a Retry-After header,
always 401, or hang until the client times out.
Bound to 127.0.0.1 on a free port (port 0), served from a background thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PATH_TEMPLATE = "/elixir/data/metadata/datasets/{dataset}/files"


def ega_file(
    file_id: str,
    dataset_id: str,
    name: str,
    size: int,
    checksum: str,
    unencrypted: str,
    *,
    checksum_type: str = "MD5",
    unencrypted_type: str = "MD5",
    status: str = "available",
) -> dict[str, Any]:
    """One file object with the API's fields AND meaning (as EGA's pyega3 client reads them): SIZE and
    CHECKSUM are of the encrypted file as transferred, UNENCRYPTED is the plaintext's checksum."""
    return {
        "fileId": file_id,
        "datasetId": dataset_id,
        "displayFileName": name.rsplit("/", 1)[-1],
        "fileName": name,
        "fileSize": size,
        "checksum": checksum,
        "checksumType": checksum_type,
        "unencryptedChecksum": unencrypted,
        "unencryptedChecksumType": unencrypted_type,
        "fileStatus": status,
    }


def ega_file_of(path: Path, file_id: str, dataset_id: str, name: str, plaintext_md5: str) -> dict[str, Any]:
    """The file object the API would give for the encrypted file at PATH (md5 and size of its bytes)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return ega_file(file_id, dataset_id, name, path.stat().st_size, digest.hexdigest(), plaintext_md5)


class EgaApiServer:
    """Threaded HTTP server in the background; use as a context manager.

    datasets: dataset id -> list of file objects (see ega_file) served as JSON.
    fail_first: answer `fail_status` (a 5xx or 429) to this many requests before answering normally.
    retry_after: the Retry-After header sent with those answers (seconds or an HTTP date), if any.
    always_status: answer every request with this status (e.g. 401) regardless of credentials.
    hang: never answer (until the server stops), so the client's timeout fires.
    body: serve these raw bytes instead of the JSON (for garbage answers).
    """

    def __init__(
        self,
        datasets: dict[str, list[dict[str, Any]]],
        user: str = "ega-test-user",
        password: str = "ega-test-password",
        fail_first: int = 0,
        fail_status: int = 500,
        always_status: int | None = None,
        hang: bool = False,
        body: bytes | None = None,
        retry_after: str | None = None,
    ) -> None:
        self.datasets = datasets
        self.user, self.password = user, password
        self.fail_first, self.fail_status = fail_first, fail_status
        self.always_status, self.hang, self.body = always_status, hang, body
        self.retry_after = retry_after
        self.requests: list[dict[str, Any]] = []  # path, user, password_ok, status answered
        self.times: list[float] = []  # time.monotonic() of each request, in order
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """The URL template for `[api] api_url`, with the literal DATASETID placeholder."""
        return self.base + PATH_TEMPLATE.format(dataset="DATASETID")

    def start(self) -> EgaApiServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return  # requests are recorded in server.requests

            def do_GET(self) -> None:
                user, pw_ok = server._credentials(self.headers.get("Authorization", ""))
                with server._lock:
                    n = len(server.requests)
                    rec = {"path": self.path, "user": user, "password_ok": pw_ok, "status": None}
                    server.requests.append(rec)
                    server.times.append(time.monotonic())
                if server.hang:
                    server._release.wait(30)
                    return
                if server.always_status is not None:
                    return self._answer(rec, server.always_status, b'{"error": "forced"}')
                if n < server.fail_first:
                    return self._answer(rec, server.fail_status, b'{"error": "try again later"}')
                if user != server.user or not pw_ok:
                    return self._answer(rec, 401, b'{"error": "unauthorised"}')
                for ds, files in server.datasets.items():
                    if self.path == PATH_TEMPLATE.format(dataset=ds):
                        body = server.body if server.body is not None else json.dumps(files).encode()
                        return self._answer(rec, 200, body)
                return self._answer(rec, 404, b'{"error": "no such dataset"}')

            def _answer(self, rec: dict[str, Any], status: int, body: bytes) -> None:
                rec["status"] = status
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="ega"')
                if status == server.fail_status and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="ega-api", daemon=True)
        self._thread.start()
        return self

    def _credentials(self, header: str) -> tuple[str | None, bool]:
        if not header.startswith("Basic "):
            return None, False
        try:
            user, _, pw = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None, False
        return user, pw == self.password

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._httpd = self._thread = None

    def __enter__(self) -> EgaApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
