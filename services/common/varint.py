"""Varints: unsigned LEB128 (7 bits a byte, low first, high bit = more), and zig-zag for signed
numbers, as Avro and the engines' compact state layouts use them."""

from __future__ import annotations

__all__ = ["VarintReader", "put_uvarint", "read_uvarint", "unzigzag", "zigzag"]


def zigzag(n: int) -> int:
    """A signed 64-bit number as an unsigned one: 0, -1, 1, -2 ... become 0, 1, 2, 3 ..."""
    return (n << 1) ^ (n >> 63)


def unzigzag(z: int) -> int:
    return (z >> 1) ^ -(z & 1)


def put_uvarint(out: bytearray, n: int) -> None:
    """Append `n` (>= 0) to `out`."""
    if n < 0:
        raise ValueError(f"negative varint {n}")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


class VarintReader:
    """Reads a layout of varints, bytes, fixed-width little-endian numbers and texts in order."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def uint(self) -> int:
        data, pos = self.data, self.pos
        b = data[pos]
        if b < 0x80:  # most numbers of a layout fit in one byte
            self.pos = pos + 1
            return b
        n, self.pos = read_uvarint(data, pos)
        return n

    def sint(self) -> int:
        return unzigzag(self.uint())

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def fixed(self, width: int) -> int:
        self.pos += width
        return int.from_bytes(self.data[self.pos - width : self.pos], "little")

    def text(self) -> str:
        n = self.uint()
        self.pos += n
        return self.data[self.pos - n : self.pos].decode()
