"""A TCP forward: listen on LISTEN_HOST:LISTEN_PORT, connect each client to TARGET_HOST:TARGET_PORT.

Why: PostgreSQL listens on the root namespace's loopback, which a process in another network namespace
cannot reach. The bed runs this in the root namespace on the bridge address (reachable from every
"host"), so the server sees connections from 127.0.0.1 and its pg_hba needs no change.

Usage: python tcpforward.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT  (port 0: any free one)
Prints the port it listens on as its first line of output, then runs until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError as exc:
            print(f"tcpforward: cannot reach {target_host}:{target_port}: {exc}", file=sys.stderr, flush=True)
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    server = await asyncio.start_server(client, listen_host, listen_port, reuse_address=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(_serve(argv[0], int(argv[1]), argv[2], int(argv[3])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
