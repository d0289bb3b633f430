"""A JPEG's header walked at C speed, before any decoder reads it.

Pillow's marker loop reads one byte at a time in Python, so a file padded with megabytes of
0xFF fill bytes or junk between its markers costs seconds of CPU before a pixel is decoded.
This walk follows Pillow's own rules marker by marker but steps over fill and junk runs with
bytes.find and a regex (C); it refuses a header with more padding or markers than any camera
writes, or with a sample precision Pillow cannot decode, and records what the decoding path
needs (frame type, size, components, where the first scan's data starts) so it is read once."""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Union

from shopsearch.errors import InvalidImageError, UnsupportedImageError

#: what the walk reads (find and re work on both)
Buffer = Union[bytes, bytearray]

#: the most fill (0xFF) and junk bytes between a header's markers: encoders write none, a damaged
#: copy a few; Pillow steps over each in Python (~0.5 us a byte), so this bounds its walk (~35 ms)
MAX_PADDING = 64 << 10
#: the most markers before the first scan: a camera's header has 10-40, a large ICC profile or
#: extended XMP cut into 64 KB APP segments ~100 more; each is a Python round in Pillow
MAX_MARKERS = 2048
#: the most scans (SOS markers) after the first scan starts: libjpeg passes over the whole image's
#: coefficients once a scan, so a small file repeating one scan a thousand times costs seconds of
#: CPU; encoders write 1 (sequential) or about 10 (progressive), an MPO's pictures a few times that
MAX_SCANS = 64

_NOT_FF = re.compile(rb"[^\xff]")
#: the end of entropy-coded data: 0xFF followed by neither a stuffed zero, a restart marker nor
#: a fill byte (a run of fill bytes before a marker matches at its last 0xFF, with no backtracking)
_DATA_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: markers Pillow reads no length after (SOI, EOI, RSTn, JPG, JPGn); those below 0xC0 it refuses
_NO_LENGTH = frozenset({0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)})
#: markers Pillow reads a frame header from (DHP included), and of them the true frames
_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xDE}
SOF = _FRAME - {0xDE}
_EXIF = b"Exif\x00\x00"


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's header says, as far as its first scan."""

    sof: int | None  # the last start-of-frame marker (0xC0 baseline...), None when there is none
    width: int
    height: int
    components: int  # in the frame
    scan_components: int  # in the first scan
    data_start: int  # offset of the first scan's entropy-coded data
    padding: int  # fill and junk bytes between markers
    data_length: int  # bytes of the first scan's entropy-coded data (see scan_data_length)
    orientation: int = 1  # EXIF orientation, read from the Exif APP1 segments as Pillow reads it


def _next_marker(data: Buffer, pos: int, padding: int) -> tuple[int, int, int]:
    """(marker, offset after it, padding so far) from `pos`, stepping over fill bytes, junk and
    escaped 0xFF as Pillow does; marker -1 at the end of the data."""
    n = len(data)
    marker = -1
    while pos < n and marker < 0:
        # look no further than the padding still allowed: a 10 MB run is refused after 64 KB
        stop = min(n, pos + MAX_PADDING - padding + 2)
        if data[pos] != 0xFF:  # junk, which Pillow steps over a byte at a time
            nxt = data.find(b"\xff", pos, stop)
            nxt = stop if nxt < 0 else nxt
            padding, pos = padding + nxt - pos, nxt
        else:
            m = _NOT_FF.search(data, pos + 1, stop)
            end = m.start() if m else stop
            padding += end - pos - 1  # fill bytes
            if m is None:
                pos = stop
            elif data[end] == 0x00:
                padding, pos = padding + 2, end + 1  # an escaped 0xFF: junk too
            else:
                marker, pos = data[end], end + 1
        if padding > MAX_PADDING:
            raise InvalidImageError(f"corrupt JPEG header: more than {MAX_PADDING:,} bytes of padding or junk "
                                    "between its markers, where photos have none (a damaged file, or one made "
                                    "to waste time)")
    return marker, pos, padding


def scan_header(data: Buffer) -> JpegHeader | None:
    """Walk the markers of a JPEG (data starting FF D8 FF) to its first scan, as Pillow does.

    None when the markers cannot be walked that far (truncated, an unknown marker): the decoder
    then says what is wrong. InvalidImageError for a header padded past MAX_PADDING or holding
    more than MAX_MARKERS markers, UnsupportedImageError for a precision other than 8 bits."""
    n = len(data)
    pos, padding = 2, 0  # Pillow starts at the third byte, an 0xFF
    sof, size, components, exif = None, (0, 0), 0, []
    for _ in range(MAX_MARKERS):
        marker, pos, padding = _next_marker(data, pos, padding)
        if marker < 0xC0:
            return None  # the end, or what Pillow calls "no marker found"
        if marker in _NO_LENGTH:
            continue
        if pos + 2 > n:
            return None
        end = pos + max(struct.unpack_from(">H", data, pos)[0], 2)  # Pillow reads nothing of a length < 2
        if end > n:
            return None
        body = pos + 2
        if marker in _FRAME:
            if end - body < 6:
                return None
            if data[body] != 8:
                raise UnsupportedImageError(_precision(data[body]))
            h, w = struct.unpack_from(">HH", data, body + 1)
            size, components = (w, h), data[body + 5]
            sof = marker if marker in SOF else sof
        elif marker == 0xE1 and data[body:body + 6] == _EXIF:
            exif.append(data[body + 6:end])  # Pillow joins them all
        elif marker == 0xDA:
            if end <= body:
                return None
            # counted from the first scan on: APP segments (an EXIF thumbnail, an ICC profile) hold
            # bytes of their own; in scan data a 0xFF is always followed by 0x00 or a marker
            scans = 1 + data.count(b"\xff\xda", end)
            if scans > MAX_SCANS:
                raise InvalidImageError(f"corrupt JPEG: {scans:,} scans, where photos have at most a few dozen "
                                        "(a damaged file, or one made to waste time)")
            return JpegHeader(sof, size[0], size[1], components, data[body], end, padding,
                              _data_length(data, end), _orientation(b"".join(exif)) if exif else 1)
        pos = end
    raise InvalidImageError(f"corrupt JPEG header: more than {MAX_MARKERS:,} markers before the image data "
                            "(a damaged file, or one made to waste time)")


def _precision(bits: int) -> str:
    if bits in (12, 16):
        return (f"{bits}-bit JPEGs are not supported (this photo stores {bits} bits a sample, as some medical "
                "and scientific cameras do); re-save it as an ordinary 8-bit JPEG")
    return f"corrupt JPEG header: a sample precision of {bits} bits (photos have 8)"


def _orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first IFD, 1 when it has none."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(min(count, 1000)):
            tag, kind = struct.unpack_from(order + "HH", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112:
                fmt = {3: "H", 4: "I"}.get(kind)
                return struct.unpack_from(order + fmt, tiff, ifd + 10 + 12 * i)[0] if fmt else 1
    except (KeyError, struct.error):
        pass
    return 1


def _data_length(data: Buffer, start: int) -> int:
    """Bytes of a scan's entropy-coded data from `start`: up to the next marker other than a
    restart (EOI, or the next scan's tables), or the end of a truncated file. A regex in C,
    ~0.3 ms a MB of photo."""
    m = _DATA_END.search(data, start)
    return (m.start() if m else len(data)) - start
