"""Protocol messages as bytes for the network (``unsamv2 serve`` and :class:`~unsamv2_engine.client.RemoteTransport`).

Never pickle: a frame is ``[4-byte big-endian header length][JSON header][array buffers]``. The
header names a message type from a fixed list (the :mod:`unsamv2_engine.protocol` dataclasses, the
handshake messages below and :class:`~unsamv2_engine.video.data.ObjectPrompt`) and its fields; every
numpy array is replaced by a descriptor (dtype, shape, codec, sizes) pointing into the buffers.

Codecs: ``bits`` (bool arrays: ``np.packbits`` then zlib; a 1024x1024 mask is ~128 KiB packed and a
few KiB after zlib), ``zlib`` (everything else, level 1: fast, and images travel once). Decoding
checks every size *before* decompressing (declared dtype, shape and byte counts against the limits
given; decompression is bounded), so a small frame cannot expand into a large allocation.

Numpy and the standard library only: importable without torch (the plugin's light install).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib
from typing import Any

import numpy as np

from unsamv2_engine import protocol as p
from unsamv2_engine.video.data import ObjectPrompt

#: Bumped whenever a message or field changes; client and server must agree.
PROTOCOL_VERSION = 5  # 2: SweepRequest.nest, SweepDecoded.labels/table; 3: FineTune, FineTuned, FineTuneEvent,
#: SegmentAll.want_masks, Segmented.stability/masks/points, BuildHierarchy.containment, HierarchyBuilt.masks_per_level;
#: 4: tiled images (SetImage.image_path/frame/tiled/tile_size/overlap, ImageEmbedded.tiled/tiles/tile_size/note,
#: Decoded.box/step/note/views_embedded, Segmented/HierarchyBuilt.tiles_done/tiles_total);
#: 5: sweeps on tiled images (SweepDecoded.box/steps/note)
_ALLOWED_DTYPES = {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64", "float16",
                   "float32", "float64"}
_HEADER = struct.Struct(">I")
_MAX_HEADER_BYTES = 4 << 20


class WireError(ValueError):
    """A frame that is malformed, of an unknown type, or larger than the limits allow."""


# ------------------------------------------------------------------------ handshake and control messages
@dataclasses.dataclass
class Hello:
    """Client -> server, first message: versions, so a mismatch is reported before any work."""

    protocol: int
    client_version: str


@dataclasses.dataclass
class Welcome:
    """Server -> client, answer to Hello: who serves, on what, and the limits it enforces.

    model: the :class:`~unsamv2_engine.protocol.ModelLoaded` fields of the served model (None if the
    server has none); limits: max_image_pixels, max_request_bytes (decoded arrays of one request),
    max_frame_bytes (one compressed frame), idle_timeout_s.
    """

    protocol: int
    server_version: str
    device: str
    model: dict | None
    limits: dict


@dataclasses.dataclass
class Refused:
    """Server -> client, instead of Welcome: the handshake failed (version mismatch); the server then closes."""

    message: str


@dataclasses.dataclass
class Cancel:
    """Client -> server: stop this client's running long job (segment all, hierarchy, propagation)."""


_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    p.LoadModel, p.SetImage, p.Predict, p.SweepRequest, p.SegmentAll, p.BuildHierarchy, p.Propagate, p.FineTune,
    p.Shutdown, p.ModelLoaded, p.ImageEmbedded, p.Decoded, p.SweepDecoded, p.Segmented, p.HierarchyBuilt, p.Propagated,
    p.FineTuned, p.FineTuneEvent, p.Progress, p.Failure, p.Stopped, Hello, Welcome, Refused, Cancel, ObjectPrompt)}


# ------------------------------------------------------------------------ encoding
def encode(message: Any) -> bytes:
    """One frame for ``message`` (a dataclass of a known type)."""
    buffers: list[bytes] = []
    header = _encode_value(message, buffers)
    text = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([_HEADER.pack(len(text)), text, *buffers])


def _encode_value(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, np.ndarray):
        return _encode_array(value, buffers)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if _TYPES.get(name) is not type(value):
            raise WireError(f"{name} cannot be sent over the network")
        return {"__type__": name, "fields": {f.name: _encode_value(getattr(value, f.name), buffers)
                                             for f in dataclasses.fields(value)}}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_value(v, buffers) for v in value]}
    if isinstance(value, list):
        return [_encode_value(v, buffers) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode_value(v, buffers) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise WireError(f"cannot send a value of type {type(value).__name__} over the network")


def _encode_array(array: np.ndarray, buffers: list[bytes]) -> dict:
    dtype = array.dtype.name
    if dtype not in _ALLOWED_DTYPES:
        raise WireError(f"arrays of dtype {dtype} cannot be sent over the network")
    array = np.ascontiguousarray(array)
    if dtype == "bool":
        codec, data = "bits", zlib.compress(np.packbits(array, axis=None).tobytes(), 1)
    else:
        codec, data = "zlib", zlib.compress(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(), 1)
    buffers.append(data)
    return {"__array__": len(buffers) - 1, "dtype": dtype, "shape": list(array.shape), "codec": codec,
            "size": len(data)}


# ------------------------------------------------------------------------ decoding
def decode(frame: bytes, *, max_array_bytes: int | None = None, max_image_pixels: int | None = None) -> Any:
    """The message of ``frame``. ``max_array_bytes`` bounds the decoded arrays of the frame (all together),
    ``max_image_pixels`` the pixels of a SetImage image and of each Propagate slice; both are checked
    before anything is decompressed. Raises :class:`WireError` with a message for the sender.
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)) or len(frame) < _HEADER.size:
        raise WireError("not an unsamv2 frame (expected binary data with a header)")
    frame = memoryview(frame)
    (length,) = _HEADER.unpack(frame[:_HEADER.size])
    if length > _MAX_HEADER_BYTES or _HEADER.size + length > len(frame):
        raise WireError("malformed frame: bad header length")
    try:
        header = json.loads(bytes(frame[_HEADER.size:_HEADER.size + length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"malformed frame header: {exc}") from None
    state = _Decoding(frame, _HEADER.size + length, max_array_bytes)
    descriptors: list[dict] = []
    _collect_arrays(header, descriptors)
    state.check(descriptors)
    if max_image_pixels is not None:
        _check_pixels(header, max_image_pixels)
    return _decode_value(header, state)


class _Decoding:
    def __init__(self, frame: memoryview, start: int, max_bytes: int | None) -> None:
        self.frame, self.max_bytes = frame, max_bytes
        self.offsets: list[tuple[int, int]] = []
        self.start = start

    def check(self, descriptors: list[dict]) -> None:
        total = 0
        offset = self.start
        for index, d in enumerate(sorted(descriptors, key=lambda d: d.get("__array__", -1))):
            if d.get("__array__") != index or d.get("dtype") not in _ALLOWED_DTYPES or \
                    d.get("codec") not in ("bits", "zlib") or not isinstance(d.get("shape"), list) or \
                    not all(isinstance(n, int) and n >= 0 for n in d["shape"]) or not isinstance(d.get("size"), int):
                raise WireError("malformed frame: bad array descriptor")
            total += _raw_bytes(d)
            self.offsets.append((offset, d["size"]))
            offset += d["size"]
        if offset != len(self.frame):
            raise WireError("malformed frame: array buffers do not match their descriptors")
        if self.max_bytes is not None and total > self.max_bytes:
            raise WireError(f"request too large: its arrays hold {total / 2**20:.1f} MiB, the server accepts at most "
                            f"{self.max_bytes / 2**20:.1f} MiB per request (see 'unsamv2 serve --max-request-mb')")

    def array(self, d: dict) -> np.ndarray:
        start, size = self.offsets[d["__array__"]]
        raw = _raw_bytes(d)
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(self.frame[start:start + size], raw + 1)
        except zlib.error as exc:
            raise WireError(f"malformed frame: {exc}") from None
        if len(data) != raw or inflater.unconsumed_tail:
            raise WireError("malformed frame: an array's data does not match its shape")
        shape = tuple(d["shape"])
        if d["codec"] == "bits":
            count = math.prod(shape)
            return np.unpackbits(np.frombuffer(data, np.uint8), count=count).astype(bool).reshape(shape)
        return np.frombuffer(data, np.dtype(d["dtype"]).newbyteorder("<")).astype(d["dtype"]).reshape(shape)


def _raw_bytes(d: dict) -> int:
    count = math.prod(d["shape"])
    return (count + 7) // 8 if d["codec"] == "bits" else count * np.dtype(d["dtype"]).itemsize


def _collect_arrays(value: Any, out: list[dict]) -> None:
    if isinstance(value, dict):
        if "__array__" in value:
            out.append(value)
            return
        for v in value.values():
            _collect_arrays(v, out)
    elif isinstance(value, list):
        for v in value:
            _collect_arrays(v, out)


def _decode_value(value: Any, state: _Decoding) -> Any:
    if isinstance(value, list):
        return [_decode_value(v, state) for v in value]
    if not isinstance(value, dict):
        return value
    if "__array__" in value:
        return state.array(value)
    if "__tuple__" in value:
        return tuple(_decode_value(v, state) for v in value["__tuple__"])
    if "__type__" in value:
        cls = _TYPES.get(value["__type__"])
        if cls is None:
            raise WireError(f"unknown message type {value['__type__']!r} (client and server versions differ?)")
        fields = value.get("fields")
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(fields, dict) or set(fields) - names:
            raise WireError(f"malformed {cls.__name__}: unknown fields {sorted(set(fields or {}) - names)}")
        try:
            return cls(**{k: _decode_value(v, state) for k, v in fields.items()})
        except TypeError as exc:
            raise WireError(f"malformed {cls.__name__}: {exc}") from None
    return {k: _decode_value(v, state) for k, v in value.items()}


def _check_pixels(header: Any, limit: int) -> None:
    """Refuse a SetImage image (or a Propagate stack slice) with more than ``limit`` pixels, from the declared
    shape (nothing decompressed yet).
    """
    if not isinstance(header, dict) or header.get("__type__") not in ("SetImage", "Propagate"):
        return
    fields = header.get("fields") or {}
    descriptor = fields.get("image") if header["__type__"] == "SetImage" else fields.get("stack")
    if not isinstance(descriptor, dict) or "__array__" not in descriptor:
        return
    shape = descriptor["shape"]
    if header["__type__"] == "SetImage":
        pixels = math.prod(shape[:2])
        what = f"image {fields.get('image_key')!r} of {'x'.join(map(str, shape))}"
    else:
        pixels = math.prod(sorted(shape)[-2:])  # the two largest axes bound a slice
        what = f"stack {fields.get('stack_key')!r} of {'x'.join(map(str, shape))}"
    if pixels > limit:
        raise WireError(f"{what} is too large: the server accepts images of at most {limit} pixels "
                        f"(about {int(math.sqrt(limit))}x{int(math.sqrt(limit))}); crop or downsample it, or start "
                        "the server with a larger --max-image-pixels")
