#!/usr/bin/env python3
"""Writes N distinct RGB PNG images (a pattern per index) to DIR: the uploads of the S3
trigger's demo and tests. Standard library only: zlib makes the image data and CRCs."""

import struct
import sys
import zlib
from pathlib import Path

WIDTH, HEIGHT = 160, 120


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def image(i: int) -> bytes:
    cx, cy = (17 * i) % WIDTH, (29 * i) % HEIGHT
    rows = bytearray()
    for y in range(HEIGHT):
        rows.append(0)  # filter: none
        for x in range(WIDTH):
            inside = (x - cx) ** 2 + (y - cy) ** 2 < (20 + i % 30) ** 2
            rows += bytes(
                (
                    255 if inside else (x * (i + 3)) % 256,
                    (y * 2 + i * 11) % 256,
                    0 if inside else ((x ^ y) + 7 * i) % 256,
                )
            )
    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: make-pngs.py N DIR")
    count, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (out / f"photo-{i:03d}.png").write_bytes(image(i))


if __name__ == "__main__":
    main()
