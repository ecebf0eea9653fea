"""Exact H.264 clips that are mostly stream-copied: a "smart cut".

A stream copy can only start at a keyframe. The smart cut re-encodes the frames from the clip's start to
the first IDR keyframe inside it (the head) and the few frames after the last whole group of pictures
that ends inside the clip (the tail), and copies every packet in between unchanged. The re-encoded frames
use SPS/PPS ids the source does not use, and the MP4's avcC record holds both sets of parameter sets, so
every slice of the joined stream finds its own: one conforming H.264 stream, no in-band parameter sets.
Sources this cannot serve (not H.264 yuv420p 8-bit in avcC form, no IDR keyframe inside the clip) are
re-encoded whole by the caller (`SmartCutUnavailable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType

from ophora.core.errors import MediaError

EPS = 1e-3
HIGH_PROFILES = (100, 110, 122, 144)
X264_PROFILES = {66: "baseline", 77: "main"}


class SmartCutUnavailable(MediaError):
    """The source or the span does not allow a smart cut; re-encode instead."""


@dataclass
class AvcConfig:
    """An AVCDecoderConfigurationRecord (the MP4 avcC box): profile, level, NAL length size, SPS and PPS."""

    profile: int
    compatibility: int
    level: int
    length_size: int
    sps: list[bytes]
    pps: list[bytes]

    def to_bytes(self) -> bytes:
        out = bytearray([1, self.profile, self.compatibility, self.level, 0xFC | (self.length_size - 1),
                         0xE0 | len(self.sps)])
        for unit in self.sps:
            out += len(unit).to_bytes(2, "big") + unit
        out.append(len(self.pps))
        for unit in self.pps:
            out += len(unit).to_bytes(2, "big") + unit
        if self.profile in HIGH_PROFILES:  # 4:2:0, 8-bit luma and chroma, no SPS extensions
            out += bytes([0xFD, 0xF8, 0xF8, 0])
        return bytes(out)


def parse_avcc(data: bytes | None) -> AvcConfig | None:
    """The avcC record in a stream's extradata; None for Annex B extradata or none."""
    if not data or len(data) < 7 or data[0] != 1:
        return None
    try:
        pos, sps, pps = 6, [], []
        for _ in range(data[5] & 0x1F):
            size = int.from_bytes(data[pos:pos + 2], "big")
            sps.append(bytes(data[pos + 2:pos + 2 + size]))
            pos += 2 + size
        for _ in range(data[pos]):
            size = int.from_bytes(data[pos + 1:pos + 3], "big")
            pps.append(bytes(data[pos + 3:pos + 3 + size]))
            pos += 2 + size
    except IndexError:
        return None
    return AvcConfig(data[1], data[2], data[3], (data[4] & 3) + 1, sps, pps)


def _rbsp(unit: bytes) -> bytes:
    """A NAL unit's payload without its header byte and emulation-prevention bytes."""
    return bytes(unit[1:]).replace(b"\x00\x00\x03", b"\x00\x00")


def _first_ue(data: bytes, skip_bits: int = 0) -> int:
    """The first Exp-Golomb number after `skip_bits` bits."""
    bits = "".join(f"{b:08b}" for b in data[:8])[skip_bits:]
    zeros = len(bits) - len(bits.lstrip("0"))
    return int(bits[zeros:2 * zeros + 1], 2) - 1


def parameter_set_ids(config: AvcConfig) -> set[int]:
    """The SPS and PPS ids the source uses."""
    return {_first_ue(_rbsp(s), 24) for s in config.sps} | {_first_ue(_rbsp(p)) for p in config.pps}


def nal_units(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of a length-prefixed (avcC-style) packet."""
    units, pos = [], 0
    while pos + length_size <= len(data):
        size = int.from_bytes(data[pos:pos + length_size], "big")
        units.append(data[pos + length_size:pos + length_size + size])
        pos += length_size + size
    return units


def annexb_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B packet (start codes 00 00 01 or 00 00 00 01)."""
    parts = bytes(data).split(b"\x00\x00\x01")
    return [p.rstrip(b"\x00") if i < len(parts) - 1 else p for i, p in enumerate(parts) if p.strip(b"\x00")]


def is_idr(data: bytes, length_size: int) -> bool:
    return any(u and u[0] & 0x1F == 5 for u in nal_units(data, length_size))


def smart_cut_config(stream) -> AvcConfig | None:
    """The stream's avcC when a smart cut can serve it (H.264, yuv420p 8-bit, avcC), else None."""
    ctx = stream.codec_context
    if ctx.name != "h264" or stream.format is None or stream.format.name != "yuv420p":
        return None
    return parse_avcc(ctx.extradata)


@dataclass
class _Plan:
    head_end: int  # index of the first copied packet (the IDR keyframe)
    copy_end: int  # index after the last copied packet
    tail_from: int  # index of the keyframe the tail is decoded from
    start_pts: int  # first frame of the clip
    boundary_pts: int  # first frame after the copied packets (the tail starts here)
    end_pts: int  # frames shown before this belong to the clip


def _plan(packets: list, tb: Fraction, base: int, start: float, end: float, length_size: int) -> _Plan:
    """Which packets are copied and which frames are re-encoded, for the frames shown in [start, end)."""
    start_pts, end_pts = span_pts(start, end, tb, base)
    key = next((i for i, p in enumerate(packets) if p.is_keyframe and start_pts <= p.pts < end_pts), None)
    if key is None or not is_idr(bytes(packets[key]), length_size):
        raise SmartCutUnavailable("no IDR keyframe inside the clip")
    # The copy ends where every packet so far shows a frame before every packet after it, inside the clip.
    seen_max, copy_end = -1, key
    suffix_min = [0] * (len(packets) + 1)
    suffix_min[-1] = 1 << 62
    for i in range(len(packets) - 1, -1, -1):
        suffix_min[i] = min(packets[i].pts, suffix_min[i + 1])
    for i in range(key, len(packets)):
        seen_max = max(seen_max, packets[i].pts)
        if seen_max >= end_pts:
            break
        if seen_max < suffix_min[i + 1]:
            copy_end = i + 1
    if copy_end == key:
        raise SmartCutUnavailable("no whole group of pictures inside the clip")
    boundary = suffix_min[copy_end]
    tail_from = max(i for i in range(key, copy_end + 1) if i == key or (
        i < len(packets) and packets[i].is_keyframe and packets[i].pts <= boundary))
    return _Plan(key, copy_end, tail_from, start_pts, boundary, end_pts)


def _decode(ctx, packets: list, ranges: list[tuple[int, int]], full_from: int = 0) -> list[list]:
    """Frames shown in each [lo_pts, hi_pts) of `ranges` from decoding `packets`, one sorted list a range.

    Packets before index `full_from`, or showing a frame outside every range, are decoded only when other
    frames refer to them (a non-reference frame outside the ranges would be thrown away)."""
    def where(pts) -> int | None:
        return next((k for k, (lo, hi) in enumerate(ranges) if pts is not None and lo <= pts < hi), None)

    ctx.flush_buffers()
    found: list[list] = [[] for _ in ranges]
    for i, packet in enumerate([*packets, None]):
        needed = packet is None or (i >= full_from and where(packet.pts) is not None)
        ctx.skip_frame = "DEFAULT" if needed else "NONREF"
        for frame in ctx.decode(packet):
            k = where(frame.pts)
            if k is not None:
                found[k].append(frame)
    ctx.flush_buffers()
    return [sorted(frames, key=lambda f: f.pts) for frames in found]


def span_pts(start: float, end: float, tb: Fraction, base: int) -> tuple[int, int]:
    """The pts range [first, after) of the frames shown in [start, end) seconds."""
    return base + int(round((start - EPS) / tb)), base + int(round((end - EPS) / tb))


@dataclass
class Carry:
    """Decoded frames of the next clip's head, shown in [lo_pts, hi_pts): decoded with this clip's tail when
    both lie in one group of pictures (adjacent narrated spans), so that group is decoded once."""

    lo_pts: int
    hi_pts: int
    frames: list


def _carry_range(packets: list, plan: _Plan, next_start_pts: int | None) -> tuple[int, int] | None:
    """[next start, its first keyframe) when the next clip's head lies in the group this tail is decoded from."""
    if next_start_pts is None or next_start_pts < plan.end_pts:
        return None
    key_pts = packets[plan.tail_from].pts
    later = [p.pts for p in packets[plan.tail_from + 1:] if p.is_keyframe]
    if any(key_pts < pts <= next_start_pts for pts in later):
        return None  # another group of pictures starts first: the next clip decodes from there
    head_end = next((pts for pts in later if pts > next_start_pts), None)
    return None if head_end is None else (next_start_pts, head_end)


def smart_cut(src: str | Path, dst_container, stream, packets: list, start: float, end: float,
              crf: int, preset: str, carry: Carry | None = None, next_start: float | None = None,
              ahead: list | None = None) -> tuple[int, int, Carry | None]:
    """Write the frames of `stream` shown in [start, end) into the open mp4 `dst_container`.

    `packets` are the source's packets in decode order from a keyframe at or before `start` to past `end`;
    `ahead`, the packets after them up to the first keyframe after `next_start` (the next clip's start).
    `carry`: the previous clip's decoding of this head, used when it covers exactly this head. Returns (pts of
    the first frame, pts after the last) in the stream's time base, and the next clip's head frames when that
    head lies in the group of pictures this clip's tail is decoded from.
    """
    config = smart_cut_config(stream)
    if config is None:
        raise SmartCutUnavailable(f"{src} is not H.264 yuv420p 8-bit with avcC parameter sets")
    tb = stream.time_base
    base = stream.start_time if stream.start_time is not None else 0
    plan = _plan(packets, tb, base, start, end, config.length_size)
    ctx = stream.codec_context
    head_range = (plan.start_pts, packets[plan.head_end].pts)
    if carry is not None and (carry.lo_pts, carry.hi_pts) == head_range:
        head = carry.frames
    else:
        head = _decode(ctx, packets[:plan.head_end], [head_range])[0] if head_range[0] < head_range[1] else []
    ranges = [(plan.boundary_pts, plan.end_pts)]
    joined = packets + (ahead or [])
    shared = None if next_start is None else _carry_range(joined, plan, span_pts(next_start, next_start, tb, base)[0])
    ranges += [shared] if shared else []
    to_decode = packets[plan.tail_from:]
    if shared:  # up to the next clip's first keyframe, as its own head decode would go
        to_decode = joined[plan.tail_from:next(i for i, p in enumerate(joined) if p.is_keyframe and p.pts == shared[1])]
    tail, *heads = (_decode(ctx, to_decode, ranges, plan.copy_end - plan.tail_from)
                    if plan.boundary_pts < plan.end_pts or shared else [[]])
    after = Carry(*shared, heads[0]) if shared else None
    free = sorted(set(range(32)) - parameter_set_ids(config))
    if not free:
        raise SmartCutUnavailable("the source uses every parameter-set id")
    encoded, sps, pps = _encode(head, tail, stream, crf, preset, free[0], config)
    out = dst_container.add_stream_from_template(stream)
    if sps:
        merged = AvcConfig(max(config.profile, sps[0][1]), config.compatibility & sps[0][2],
                           max(config.level, sps[0][3]), config.length_size, config.sps + sps, config.pps + pps)
        out.codec_context.extradata = merged.to_bytes()
    first = head[0].pts if head else packets[plan.head_end].pts
    delay = packets[plan.head_end].pts - (packets[plan.head_end].dts if packets[plan.head_end].dts is not None
                                          else packets[plan.head_end].pts)
    step = max(1, int(round(1 / (float(stream.average_rate or stream.guessed_rate or 30) * tb))))
    last = tail[-1].pts if tail else max(p.pts for p in packets[plan.head_end:plan.copy_end])
    last_dts = None

    def mux(packet, pts: int, dts: int) -> None:
        nonlocal last_dts
        dts = min(pts, dts if last_dts is None else max(dts, last_dts + 1))
        packet.pts, packet.dts, packet.time_base, packet.stream = pts - first, dts - first, tb, out
        last_dts = dts
        dst_container.mux(packet)

    for packet in encoded:
        if packet.pts < packets[plan.head_end].pts:
            mux(packet, packet.pts, packet.pts - delay)
    for packet in packets[plan.head_end:plan.copy_end]:
        mux(packet, packet.pts, packet.dts if packet.dts is not None else packet.pts - delay)
    for packet in encoded:
        if packet.pts >= packets[plan.head_end].pts:
            mux(packet, packet.pts, packet.pts - delay)
    return first - base, last + step - base, after


def _encode(head: list, tail: list, stream, crf: int, preset: str, ps_id: int,
            config: AvcConfig) -> tuple[list, list[bytes], list[bytes]]:
    """Encode the head and tail frames (the tail starts with an IDR); packets length-prefixed, plus their SPS/PPS."""
    if not head and not tail:
        return [], [], []
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = stream.codec_context.width, stream.codec_context.height, "yuv420p"
    enc.time_base = stream.time_base
    enc.framerate = stream.average_rate or stream.guessed_rate or Fraction(30)
    options = {"crf": str(crf), "preset": preset, "threads": "1", "forced-idr": "1",
               "x264-params": f"sps-id={ps_id}:bframes=0:scenecut=0:keyint=infinite"}
    if config.profile in X264_PROFILES:
        options["profile"] = X264_PROFILES[config.profile]
    enc.options = options
    raw = []
    for i, frame in enumerate([*head, *tail]):
        frame.pict_type = PictureType.I if head and i == len(head) else PictureType.NONE
        raw.extend(enc.encode(frame))
    raw.extend(enc.encode(None))
    sps: list[bytes] = []
    pps: list[bytes] = []
    packets = []
    for packet in raw:
        units = []
        for unit in annexb_units(bytes(packet)):
            kind = unit[0] & 0x1F
            if kind == 7 and unit not in sps:
                sps.append(unit)
            elif kind == 8 and unit not in pps:
                pps.append(unit)
            elif kind not in (6, 7, 8, 9):  # SEI (x264's settings text), parameter sets, delimiters
                units.append(unit)
        out = av.Packet(b"".join(len(u).to_bytes(config.length_size, "big") + u for u in units))
        out.pts, out.dts, out.is_keyframe = packet.pts, packet.dts, packet.is_keyframe
        out.duration = packet.duration
        packets.append(out)
    if not sps or not pps:
        raise SmartCutUnavailable("the encoder gave no parameter sets")
    return packets, sps, pps
