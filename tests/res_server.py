"""Stand-in for the seed's re-encryption service (RES), for tests only.

`GET /?filePath=<abs>&sourceFormat=aes128|aes256&sourceKey=<password>&destinationFormat=plain`
answers with the plaintext of a legacy `.cip` file, streamed. Switches let tests cut the stream
short (with a Content-Length that promises more, or a chunked body without its final chunk) to check
that a short download never becomes a short archived file, or answer 503/429 (with an optional
Retry-After) to the first requests, to check the client's retries. Bound to 127.0.0.1 on a free port.
The AES scheme is implemented here independently of legampi.formats.legacy_aes on purpose.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SALT = bytes.fromhex("f42201009edf4e15")
KEY_BYTES = {"aes128": 16, "aes256": 32}


class ResServer:
    """Threaded HTTP server in the background; use as a context manager."""

    def __init__(
        self,
        root: Path | None = None,
        chunked: bool = False,
        cut_after: int | None = None,
        block: int = 65536,
        fail_first: int = 0,
        fail_status: int = 503,
        retry_after: str | None = None,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else None
        self.chunked = chunked  # chunked transfer encoding instead of Content-Length
        self.cut_after = cut_after  # close the connection after this many plaintext bytes
        self.block = block
        self.fail_first, self.fail_status = fail_first, fail_status  # busy for the first N requests
        self.retry_after = retry_after  # Retry-After header sent with those answers
        self.requests: list[dict[str, str]] = []
        self.statuses: list[int] = []  # status answered to each request, in order
        self.times: list[float] = []  # time.monotonic() of each request
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ResServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return  # keep test output clean; requests are recorded in server.requests

            def do_GET(self) -> None:
                q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                server.requests.append(q)
                server.times.append(time.monotonic())
                if len(server.requests) <= server.fail_first:
                    return self._fail(server.fail_status, "busy, try again later")
                path = q.get("filePath", "")
                fmt = q.get("sourceFormat", "")
                if q.get("destinationFormat") != "plain" or fmt not in KEY_BYTES or "sourceKey" not in q:
                    return self._fail(400, "bad parameters")
                p = Path(path)
                outside = server.root is not None and not p.resolve().is_relative_to(server.root)
                if not p.is_absolute() or outside:
                    return self._fail(403, "path not allowed")
                if not p.is_file():
                    return self._fail(404, "no such file")
                size = p.stat().st_size
                if size < 16:
                    return self._fail(422, "file shorter than its IV")
                key = hashlib.pbkdf2_hmac("sha1", q["sourceKey"].encode(), SALT, 1024, KEY_BYTES[fmt])
                server.statuses.append(200)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if server.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(size - 16))
                self.end_headers()
                sent = 0
                with open(p, "rb") as f:
                    dec = Cipher(algorithms.AES(key), modes.CTR(f.read(16))).decryptor()
                    while True:
                        data = f.read(server.block)
                        if not data:
                            break
                        plain = dec.update(data)
                        if server.cut_after is not None and sent + len(plain) > server.cut_after:
                            plain = plain[: server.cut_after - sent]
                            self._send(plain)
                            self.wfile.flush()
                            self.close_connection = True
                            return  # connection closed without the rest (and without a final chunk)
                        self._send(plain)
                        sent += len(plain)
                if server.chunked:
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _send(self, data: bytes) -> None:
                if not data:
                    return
                if server.chunked:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                else:
                    self.wfile.write(data)

            def _fail(self, code: int, msg: str) -> None:
                body = msg.encode()
                server.statuses.append(code)
                self.send_response(code)
                if code == server.fail_status and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="res-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ResServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import sys

    srv = ResServer(root=Path(sys.argv[1]) if len(sys.argv) > 1 else None).start()
    print(srv.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        srv.stop()
        os._exit(0)
