"""Crypt4GH (GA4GH) streaming decryptor, encryptor and header re-encryptor.

We drive the segment loop ourselves instead of `crypt4gh.lib` because lib.encrypt treats the first
short read as end of file (silently truncating data fed from pipes) and lib.decrypt cannot tell
corruption from truncation. Header crypto is done with `crypt4gh.sodium` directly because the
`crypt4gh.header` helpers log secret keys at DEBUG level.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from crypt4gh import header as c4gh_header
from crypt4gh import sodium

from legampi.formats.base import ByteSource, IngestError, read_exact_into

MAGIC = b"crypt4gh"
VERSION = 1
SEGMENT_SIZE = 65536
CIPHER_DIFF = 28  # 12-byte nonce + 16-byte MAC
CIPHER_SEGMENT_SIZE = SEGMENT_SIZE + CIPHER_DIFF
# Limits that stop a garbage file from making us allocate gigabytes for a "header".
MAX_PACKETS = 1024
MAX_PACKET_LEN = 1 << 20
_PACKET_DATA_ENC = 0
_PACKET_EDIT_LIST = 1


@dataclass
class Header:
    """What the inbox key revealed from a Crypt4GH header."""

    size: int  # bytes of the serialized header in the source
    session_keys: list[bytes] = field(repr=False)
    packets: list[bytes] = field(repr=False)  # decrypted data-encryption packets, for re-encryption


def segments_per_read(chunk_size: int) -> int:
    """Whole ciphertext segments per I/O call for a requested chunk size (at least one)."""
    return max(1, chunk_size // CIPHER_SEGMENT_SIZE)


def _decrypt_packet(packet: bytes, secret_key: bytes, public_key: bytes) -> bytes | None:
    """Open one header packet with our key; None if it is for somebody else."""
    if len(packet) < 4 + 32 + CIPHER_DIFF + 1 or int.from_bytes(packet[:4], "little") != 0:
        return None  # not X25519/ChaCha20 (the only method defined), or too short to be one
    peer_pk = packet[4:36]
    shared = sodium.kx_client(public_key, secret_key, peer_pk)
    out = bytearray(len(packet) - 36 - CIPHER_DIFF)
    try:
        n = sodium.chacha20poly1305_decrypt(out, packet[36:], shared)
    except ValueError:
        return None  # MAC mismatch: encrypted for another recipient
    return bytes(out[:n])


def read_header(stream: ByteSource, secret_key: bytes, label: str = "<stream>") -> Header:
    """Parse and open the header, leaving `stream` at the first data segment."""
    first = bytearray(16)
    n = read_exact_into(stream, first)
    if n == 0:
        raise IngestError("truncated", f"{label}: empty file (0 bytes); a Crypt4GH file has a header")
    if bytes(first[: min(n, 8)]) != MAGIC[: min(n, 8)]:
        raise IngestError("format", f'{label}: not a Crypt4GH file (no "crypt4gh" magic at the start)')
    if n < 16:
        raise IngestError("truncated", f"{label}: Crypt4GH header cut after {n} bytes")
    version = int.from_bytes(first[8:12], "little")
    if version != VERSION:
        raise IngestError("format", f"{label}: unsupported Crypt4GH version {version}")
    count = int.from_bytes(first[12:16], "little")
    if count == 0 or count > MAX_PACKETS:
        raise IngestError("format", f"{label}: Crypt4GH header declares {count} packets")
    size = 16
    packets = []
    for i in range(count):
        lenbuf = bytearray(4)
        got = read_exact_into(stream, lenbuf)
        size += got
        if got < 4:
            raise IngestError("truncated", f"{label}: Crypt4GH header cut inside packet {i} of {count}")
        plen = int.from_bytes(lenbuf, "little") - 4
        if plen <= 0 or plen > MAX_PACKET_LEN:
            raise IngestError("format", f"{label}: Crypt4GH header packet {i} has invalid length {plen + 4}")
        body = bytearray(plen)
        got = read_exact_into(stream, body)
        size += got
        if got < plen:
            raise IngestError("truncated", f"{label}: Crypt4GH header cut inside packet {i} of {count}")
        packets.append(bytes(body))

    public_key = sodium.derive_pk(secret_key)
    opened = [p for p in (_decrypt_packet(pkt, secret_key, public_key) for pkt in packets) if p is not None]
    if not opened:
        raise IngestError(
            "key",
            f"{label}: no Crypt4GH header packet opens with the inbox secret key (encrypted for another recipient?)",
        )
    session_keys = []
    data_packets = []
    for pkt in opened:
        ptype = int.from_bytes(pkt[:4], "little")
        if ptype == _PACKET_EDIT_LIST:
            raise IngestError(
                "format",
                f"{label}: Crypt4GH edit lists are not supported (the file holds a "
                "range of its data); re-encrypt the whole file without --range",
            )
        if ptype != _PACKET_DATA_ENC:
            raise IngestError("format", f"{label}: unsupported Crypt4GH header packet type {ptype}")
        method = int.from_bytes(pkt[4:8], "little")
        if method != 0 or len(pkt) != 8 + 32:
            raise IngestError("format", f"{label}: unsupported Crypt4GH bulk encryption method {method}")
        session_keys.append(pkt[8:])
        data_packets.append(pkt)
    return Header(size=size, session_keys=session_keys, packets=data_packets)


def build_header(packets: Iterable[bytes], recipient_pk: bytes) -> bytes:
    """Serialize `packets` encrypted for `recipient_pk` with a fresh writer key, checked before it is used.

    The one header seal: `process` (new files and `reencrypt = header`), `rekey` and `export` all call it.
    A per-file random writer key (as the crypt4gh CLI uses when no --sk is given) means the archive needs
    only its public key and no writer secret ever exists on disk. The writer side of the X25519 exchange
    derives the same shared key as the recipient, so opening every packet again with it proves the
    recipient's secret key will open this header, without having that key.
    """
    plain = list(packets)
    writer_sk = os.urandom(32)
    writer_pk = sodium.derive_pk(writer_sk)
    shared = sodium.kx_server(writer_pk, writer_sk, recipient_pk)
    sealed = []
    for pkt in plain:
        out = bytearray(len(pkt) + CIPHER_DIFF)
        n = sodium.chacha20poly1305_encrypt(out, pkt, shared)
        sealed.append((0).to_bytes(4, "little") + writer_pk + bytes(out[:n]))
    raw = c4gh_header.serialize(sealed)
    _check_sealed(raw, plain, shared)
    return raw


def _check_sealed(raw: bytes, plain: list[bytes], shared: bytes) -> None:
    """Open every packet of the serialized header `raw` with the writer's `shared` key: it must give `plain`."""
    opened = []
    for body in _packet_bodies(raw):
        buf = bytearray(len(body))
        try:
            n = sodium.chacha20poly1305_decrypt(buf, body[36:], shared)
        except ValueError:
            raise IngestError("key", "the new header does not open again with its own key exchange") from None
        opened.append(bytes(buf[:n]))
    if opened != plain:
        raise IngestError("key", "the new header does not hold the original session keys")


def _packet_bodies(raw: bytes) -> list[bytes]:
    """Packet bodies (after the length field) of a serialized header: layout only, no keys."""
    count = int.from_bytes(raw[12:16], "little")
    out, off = [], 16
    for _ in range(count):
        n = int.from_bytes(raw[off : off + 4], "little")
        out.append(raw[off + 4 : off + n])
        off += n
    if off != len(raw):
        raise IngestError("format", f"malformed header: {len(raw) - off} stray bytes")
    return out


def _segment_failure(label: str, index: int, seg_len: int, last: bool) -> IngestError:
    if last and seg_len < CIPHER_SEGMENT_SIZE:
        return IngestError(
            "truncated",
            f"{label}: last Crypt4GH segment (#{index}, {seg_len} bytes) fails "
            "authentication: the file is truncated or corrupted",
        )
    return IngestError(
        "corrupt",
        f"{label}: Crypt4GH segment #{index} fails authentication (MAC "
        "mismatch): the file is corrupted or was tampered with",
    )


def iter_segments(
    stream: ByteSource, session_keys: list[bytes], chunk_size: int = 4 << 20, label: str = "<stream>"
) -> Iterator[tuple[memoryview, memoryview]]:
    """Yield (ciphertext, plaintext) views for batches of whole segments after the header.

    Both views point into buffers reused for the next batch: consume them before advancing.
    """
    nseg = segments_per_read(chunk_size)
    cbuf = bytearray(nseg * CIPHER_SEGMENT_SIZE)
    pbuf = bytearray(nseg * SEGMENT_SIZE)
    cview = memoryview(cbuf)
    pview = memoryview(pbuf)
    keys = list(session_keys)
    index = 0
    while True:
        n = read_exact_into(stream, cbuf)
        if n == 0:
            return
        last = n < len(cbuf)
        plain_len = 0
        off = 0
        while off < n:
            seg_len = min(CIPHER_SEGMENT_SIZE, n - off)
            if seg_len <= CIPHER_DIFF:
                raise IngestError(
                    "truncated",
                    f"{label}: last Crypt4GH segment (#{index}) has only "
                    f"{seg_len} bytes, under nonce + MAC: the file is truncated",
                )
            seg = cview[off : off + seg_len]
            out = pview[plain_len : plain_len + seg_len - CIPHER_DIFF]
            for k, key in enumerate(keys):
                try:
                    got = sodium.chacha20poly1305_decrypt(out, seg, key)
                except ValueError:
                    continue
                if k:  # keep the key that worked first for the next segments
                    keys.insert(0, keys.pop(k))
                break
            else:
                raise _segment_failure(label, index, seg_len, last and off + seg_len == n)
            plain_len += got
            off += seg_len
            index += 1
        yield cview[:n], pview[:plain_len]
        if last:
            return


def decrypt_stream(
    stream: ByteSource, secret_key: bytes, chunk_size: int = 4 << 20, label: str = "<stream>"
) -> Iterator[memoryview]:
    """Plaintext chunks of a Crypt4GH stream (views valid until the next chunk is requested)."""
    hdr = read_header(stream, secret_key, label)
    for _cipher, plain in iter_segments(stream, hdr.session_keys, chunk_size, label):
        yield plain


def encrypt_stream(
    chunks: Iterable[bytes | bytearray | memoryview], recipient_pk: bytes, batch_segments: int = 64
) -> Iterator[memoryview | bytes]:
    """Crypt4GH-encrypt plaintext chunks of any size for `recipient_pk`: header, then segments.

    Short or odd-sized chunks (gpg pipes, HTTP) are regrouped into full 64 KiB segments so the output
    is byte-for-byte what a reader expects; only the final segment may be short. Yielded views are
    reused for the next batch.
    """
    session_key = os.urandom(32)
    packet = c4gh_header.make_packet_data_enc(0, session_key)
    yield build_header([packet], recipient_pk)

    batch_segments = max(1, batch_segments)
    obuf = bytearray(batch_segments * CIPHER_SEGMENT_SIZE)
    oview = memoryview(obuf)
    olen = 0
    pending = bytearray(SEGMENT_SIZE)
    pview = memoryview(pending)
    plen = 0
    encrypt = sodium.chacha20poly1305_encrypt

    for chunk in chunks:
        mv = memoryview(chunk)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        pos = 0
        total = len(mv)
        if plen:
            take = min(SEGMENT_SIZE - plen, total)
            pview[plen : plen + take] = mv[:take]
            plen += take
            pos = take
            if plen < SEGMENT_SIZE:
                continue
            olen += encrypt(oview[olen : olen + CIPHER_SEGMENT_SIZE], pview, session_key)
            plen = 0
            if olen == len(obuf):
                yield oview[:olen]
                olen = 0
        while total - pos >= SEGMENT_SIZE:
            olen += encrypt(oview[olen : olen + CIPHER_SEGMENT_SIZE], mv[pos : pos + SEGMENT_SIZE], session_key)
            pos += SEGMENT_SIZE
            if olen == len(obuf):
                yield oview[:olen]
                olen = 0
        rest = total - pos
        if rest:
            pview[:rest] = mv[pos:]
            plen = rest
    if plen:
        olen += encrypt(oview[olen : olen + plen + CIPHER_DIFF], pview[:plen], session_key)
    if olen:
        yield oview[:olen]


def reencrypt_header_stream(
    stream: ByteSource,
    secret_key: bytes,
    recipient_pk: bytes,
    plain_sink: Callable[[memoryview], None],
    chunk_size: int = 4 << 20,
    label: str = "<stream>",
) -> Iterator[bytes | memoryview]:
    """Yield the archived file for `reencrypt = header`: new header, payload bytes copied unchanged.

    Every segment is still decrypted (and handed to `plain_sink`) so a corrupt payload is caught and
    the plaintext checksums can be compared with the manifest before anything is archived.
    """
    hdr = read_header(stream, secret_key, label)
    yield build_header(hdr.packets, recipient_pk)
    for cipher, plain in iter_segments(stream, hdr.session_keys, chunk_size, label):
        plain_sink(plain)
        yield cipher
