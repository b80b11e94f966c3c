"""The Standard MIDI File structure, walked byte by byte in pure Python, so a damaged file is refused before a parser
written in C reads past its end.

symusic (and the minimidi parser inside it) trusts the lengths a file declares: a truncated file makes it read beyond
the buffer, which ends in an error, a silent partial parse or a crash, depending on what lies in memory there.
``check`` reads only what is inside the file and refuses, with the reason, anything a parser could misread:

- the header: ``MThd`` of length 6, format 0, 1 or 2, at least one track, a ticks-per-quarter division (not 0, not
  SMPTE time code);
- every chunk's declared length within the file, and as many ``MTrk`` chunks as the header declares (other chunks are
  skipped, as the standard asks);
- in every track: variable-length quantities of at most four bytes, running status only after a channel message,
  data bytes below 0x80, meta and sysex lengths within the track, the fixed lengths of the meta events a parser reads
  as numbers (tempo, time and key signature, ...), a tempo above 0, and an End-of-Track event.

The same bytes always give the same verdict. Standard MIDI File 1.0: https://midi.org/standard-midi-files-specification

>>> check(b"MThd\\x00\\x00\\x00\\x06\\x00\\x00\\x00\\x01\\x01\\xe0MTrk\\x00\\x00\\x00\\x04\\x00\\xff\\x2f\\x00")
Header(format=0, tracks=1, ticks_per_quarter=480)
>>> check(b"MThd\\x00\\x00\\x00\\x06\\x00\\x00\\x00\\x01\\x01\\xe0MTrk\\x00\\x00\\x00\\x09\\x00\\x90\\x3c")
Traceback (most recent call last):
...
nexttoken.errors.UserError: truncated: track 1 declares 9 bytes but the file ends 3 bytes into it
"""

from __future__ import annotations

from typing import NamedTuple

from nexttoken.errors import UserError

# Meta events a parser reads as fixed-size numbers: type -> the lengths the standard allows.
META_LENGTHS = {0x00: (0, 2), 0x20: (1,), 0x21: (1,), 0x2F: (0,), 0x51: (3,), 0x54: (5,), 0x58: (4,), 0x59: (2,)}
END_OF_TRACK = 0x2F
SET_TEMPO = 0x51


class Header(NamedTuple):
    format: int
    tracks: int
    ticks_per_quarter: int


def check(data: bytes) -> Header:
    """The header of a well-formed Standard MIDI File; a UserError that says what is wrong with any other bytes."""
    if len(data) < 14 or data[:4] != b"MThd":
        raise UserError("it does not start with MThd, as a MIDI file does" if data[:4] != b"MThd" else
                        f"truncated: the file ends {len(data)} bytes into its header")
    size = int.from_bytes(data[4:8], "big")
    if size != 6:
        raise UserError(f"a header of {size} bytes (a MIDI header has 6)")
    fmt, tracks, division = (int.from_bytes(data[k : k + 2], "big") for k in (8, 10, 12))
    if fmt > 2:
        raise UserError(f"MIDI format {fmt} (there are formats 0, 1 and 2)")
    if tracks == 0:
        raise UserError("the header declares no tracks")
    if division & 0x8000:
        raise UserError("SMPTE time code division (only ticks per quarter note are read)")
    if division == 0:
        raise UserError("0 ticks per quarter note")
    pos, found = 14, 0
    while found < tracks:
        if pos + 8 > len(data):
            raise UserError(f"truncated: the file ends after {found} of the {tracks} tracks it declares")
        kind, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "big")
        body = pos + 8
        if body + size > len(data):
            what = f"track {found + 1}" if kind == b"MTrk" else f"a {kind!r} chunk"
            raise UserError(f"truncated: {what} declares {size:,} bytes but the file ends {len(data) - body:,} "
                            f"bytes into it")
        if kind == b"MTrk":
            found += 1
            _check_track(data, body, body + size, found)
        pos = body + size
    return Header(fmt, tracks, division)


def _vlq(data: bytes, pos: int, end: int, track: int) -> tuple[int, int]:
    """A variable-length quantity at ``pos``: (value, position after it)."""
    value = 0
    for k in range(4):
        if pos + k >= end:
            raise UserError(f"truncated: track {track} ends inside a variable-length number")
        byte = data[pos + k]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos + k + 1
    raise UserError(f"track {track}: a variable-length number longer than 4 bytes at byte {pos}")


def _check_track(data: bytes, pos: int, end: int, track: int) -> None:
    running = 0  # status of the last channel message, for running status; 0 after meta and sysex events
    while pos < end:
        _, pos = _vlq(data, pos, end, track)  # the delta time
        if pos >= end:
            raise UserError(f"truncated: track {track} ends between an event's time and the event")
        status = data[pos]
        if status < 0x80:  # running status: the data of another message like the last channel message
            if not running:
                raise UserError(f"track {track}: a data byte at byte {pos} where an event should start")
            status = running
        else:
            pos += 1
        if status == 0xFF:
            if pos >= end:
                raise UserError(f"truncated: track {track} ends inside a meta event")
            kind = data[pos]
            length, pos = _vlq(data, pos + 1, end, track)
            if pos + length > end:
                raise UserError(f"truncated: a meta event of track {track} runs past the track's end")
            if kind in META_LENGTHS and length not in META_LENGTHS[kind]:
                raise UserError(f"track {track}: a meta event {kind:#04x} of {length} bytes (it has "
                                f"{' or '.join(map(str, META_LENGTHS[kind]))})")
            if kind == SET_TEMPO and int.from_bytes(data[pos : pos + 3], "big") == 0:
                raise UserError(f"track {track}: a tempo of 0 microseconds per quarter note")
            pos += length
            running = 0
            if kind == END_OF_TRACK:
                return  # what follows End-of-Track in the chunk is not part of the track
        elif status == 0xF0:
            length, pos = _vlq(data, pos, end, track)
            if pos + length > end:
                raise UserError(f"truncated: a sysex event of track {track} runs past the track's end")
            pos += length
            running = 0
        elif status >= 0xF0:  # 0xF7 escapes and system messages, which the parser reads with another layout
            raise UserError(f"track {track}: a {status:#04x} event at byte {pos - 1}, which this reader does not "
                            f"accept")
        else:
            size = 1 if status & 0xF0 in (0xC0, 0xD0) else 2  # program change, channel pressure: one data byte
            if pos + size > end:
                raise UserError(f"truncated: track {track} ends inside a channel message")
            if any(b & 0x80 for b in data[pos : pos + size]):
                raise UserError(f"track {track}: a data byte above 127 at byte {pos}")
            pos += size
            running = status
    raise UserError(f"track {track} has no End-of-Track event (the file may be cut short)")
