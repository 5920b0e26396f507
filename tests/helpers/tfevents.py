"""A small reader of TensorBoard event files (TFRecord framing + the Event protobuf), for tests.

Independent of the writer: it parses the framing itself and checks both masked CRC-32C
checksums of every record, so a torn or corrupt file fails the test.
"""

from __future__ import annotations

import struct
from pathlib import Path


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def records(path: Path):
    data = Path(path).read_bytes()
    at = 0
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        assert length_crc == _masked(header), f"{path}: bad length checksum at byte {at}"
        payload = data[at + 12 : at + 12 + length]
        assert len(payload) == length, f"{path}: truncated record at byte {at}"
        (payload_crc,) = struct.unpack("<I", data[at + 12 + length : at + 16 + length])
        assert payload_crc == _masked(payload), f"{path}: bad data checksum at byte {at}"
        yield payload
        at += 16 + length


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` of every event file directly in ``folder``."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(Path(folder).glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    for file in files:
        for payload in records(file):
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out
