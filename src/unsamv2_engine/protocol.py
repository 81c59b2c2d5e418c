"""The typed protocol between a front end (the napari widget, a script) and the engine.

Requests and replies are plain dataclasses of numbers, strings and numpy arrays: they travel
unchanged in-process, to a local engine process (pickled over a pipe), or to a remote engine.
Every request carries a ``request_id``; its reply carries the same id. Replies to failed
requests are :class:`Failure`; long jobs send :class:`Progress` messages before their reply.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unsamv2_engine.video.data import DEFAULT_MASK_THRESHOLD, ObjectPrompt  # numpy only

_ids = itertools.count(1)


def next_request_id() -> int:
    """A new request id (unique in this process)."""
    return next(_ids)


# ------------------------------------------------------------------------------------ requests
@dataclass
class LoadModel:
    """Load a checkpoint (path) or a registry model (name), optionally with an adapter."""

    checkpoint: str | None = None
    model_name: str | None = None
    adapter: str | None = None
    device: str = "auto"
    download: bool = False
    allow_base_mismatch: bool = False
    request_id: int = field(default_factory=next_request_id)


@dataclass
class SetImage:
    """Embed a 2D image under a key (e.g. ``"<layer>@<slice index>"``); kept in a small cache.

    A large image (a side above :data:`~unsamv2_engine.tiling.grid.TILE_ABOVE` px, or ``tiled=True``) is
    not embedded up front: it gets a :class:`~unsamv2_engine.tiling.interactive.TiledSession` (prompts are
    decoded on full-resolution tiles of ``tile_size`` px, default the model input, overlapping by ``overlap``,
    default a quarter tile) and whole-image requests run tile by tile.

    image: ``[H, W]`` or ``[H, W, 3|4]``; None: the engine reads the plane itself, lazily, from
    ``image_path`` (zarr / OME-Zarr level 0, TIFF; ``frame``: the slice of a stack), which only a local
    engine can (a server refuses: send the pixels). image_path: the file the image came from; with a tiled
    image, ``IMAGE.embeddings.zarr`` beside it (``unsamv2 embed``'s default output) is used when it exists
    and its key (pixels, contrast limits, tiling, model) matches; a mismatching cache is left untouched
    and not used. tiled: None = the engine's rule by size.
    """

    image_key: str
    image: np.ndarray | None
    contrast_limits: tuple[float, float] | None = None
    rgb: bool | None = None
    image_path: str | None = None
    frame: int | None = None
    tiled: bool | None = None
    tile_size: int | None = None
    overlap: int | None = None
    request_id: int = field(default_factory=next_request_id)


@dataclass
class Predict:
    """Decode one object on an embedded image. points_xy ``[N, 2]`` (x, y) pixels, labels ``[N]`` 1/0.

    want_logits: False leaves ``Decoded.low_res_logits`` None (a front end that only shows the mask saves
    256 KiB per decode over a network).
    """

    image_key: str
    points_xy: np.ndarray
    labels: np.ndarray
    granularity: float | None
    mask_threshold: float = 0.0
    m2m: bool = False
    mask_input: np.ndarray | None = None
    want_logits: bool = True
    request_id: int = field(default_factory=next_request_id)


@dataclass
class SweepRequest:
    """Decode one prompt at several granularities (one batched decoder pass).

    nest: also nest the masks into a hierarchy in the engine
    (:func:`~unsamv2_engine.hierarchy.sweep_hierarchy`), returned in the reply's ``labels`` and ``table``.
    """

    image_key: str
    points_xy: np.ndarray
    labels: np.ndarray
    granularities: list[float]
    mask_threshold: float = 0.0
    m2m: bool = False
    nest: bool = False
    request_id: int = field(default_factory=next_request_id)


@dataclass
class SegmentAll:
    """Whole-image segmentation of an embedded image at one granularity.

    settings: :class:`~unsamv2_engine.automatic.AutoSettings` fields to override (e.g. a preset's), plus
    ``preset`` (the starting settings, default ``cpu``) and ``decode_batch`` (prompts per decoder call; default:
    8 on a CPU, else the settings' points_per_batch). want_masks: also return every mask (overlaps kept),
    its stability and grid point (``unsamv2 auto --json`` writes them as COCO).
    """

    image_key: str
    granularity: float | None
    settings: dict = field(default_factory=dict)
    want_masks: bool = False
    request_id: int = field(default_factory=next_request_id)


@dataclass
class BuildHierarchy:
    """Whole-image segmentation at several granularities, nested into one label hierarchy.

    settings: as :class:`SegmentAll`'s; containment: share of an object its parent must cover.
    """

    image_key: str
    granularities: list[float]
    settings: dict = field(default_factory=dict)
    containment: float = 0.5
    request_id: int = field(default_factory=next_request_id)


@dataclass
class Propagate:
    """Propagate objects prompted on slices through a z-stack or time-lapse (``unsamv2_engine.video``).

    stack: the whole array (``[N0, N1, N2]`` or 4D with a channel axis), sent once per ``stack_key``:
    later requests for the same key may leave it None and reuse the engine's session (its frame
    embeddings stay cached). prompts: every prompt of every object, each time (the engine replaces
    the key's prompts with them); :class:`~unsamv2_engine.video.data.ObjectPrompt` is plain numpy data.
    axis / channel_axis / contrast_limits: see :mod:`unsamv2_engine.video.frames` (changing them rebuilds
    the session from the stored stack). direction: both, forward or backward. Progress messages (stage
    ``"propagate"``, one per slice) come before the reply; the client's cancel stops at the next slice
    and the reply then has ``cancelled=True``.
    """

    stack_key: str
    prompts: list[ObjectPrompt]
    stack: np.ndarray | None = None
    axis: int = 0
    channel_axis: int | None = None
    direction: str = "both"
    mask_threshold: float = DEFAULT_MASK_THRESHOLD
    contrast_limits: tuple[float, float] | None = None
    request_id: int = field(default_factory=next_request_id)


@dataclass
class FineTune:
    """Fine-tune the served model's base checkpoint on a folder **of the server** (``unsamv2 serve --data-root``).

    Every path is a server path, absolute or relative to the server's data root, and must lie inside it:
    images (folder), pseudo_labels (folder; None: made first, into ``<workdir>/pseudo-labels``), output (the
    adapter ``.pt`` to write), workdir (checkpoints and log; None: ``<output stem>_work`` next to the output).
    The other fields are those of ``unsamv2 finetune``. Progress comes as :class:`FineTuneEvent` messages (the
    trainer's events); the client's cancel saves a checkpoint after the current step and the reply then has
    ``cancelled=True`` (``resume=True`` continues it).
    """

    images: str
    output: str
    pseudo_labels: str | None = None
    workdir: str | None = None
    max_steps: int = 200
    trainable: str = "granularity"
    batch_size: int = 2
    lr: float = 1e-4
    seed: int = 0
    val_fraction: float = 0.1
    max_masks: int = 30
    correction_clicks: int = 3
    resume: bool = False
    backbone: str | None = None
    request_id: int = field(default_factory=next_request_id)


@dataclass
class Shutdown:
    """Stop the engine (answered with :class:`Stopped`)."""

    request_id: int = field(default_factory=next_request_id)


Request = (LoadModel | SetImage | Predict | SweepRequest | SegmentAll | BuildHierarchy | Propagate | FineTune
           | Shutdown)


# ------------------------------------------------------------------------------------ replies
@dataclass
class ModelLoaded:
    """The model is loaded: what it is and where it runs."""

    request_id: int
    label: str
    family: str
    size: str
    has_granularity: bool
    device: str


@dataclass
class ImageEmbedded:
    """An image is embedded and kept under ``image_key``.

    tiled: a large image kept as a tiled session (nothing embedded yet); tiles: its grid's tile count;
    tile_size: px; note: what the engine did about it (the embedding cache used, or why not).
    """

    request_id: int
    image_key: str
    image_hw: tuple[int, int]
    seconds: float
    cached: bool
    tiled: bool = False
    tiles: int = 0
    tile_size: int = 0
    note: str = ""


@dataclass
class Decoded:
    """mask bool ``[H, W]``; low_res_logits ``[256, 256]`` float32 (None if the request had want_logits=False).

    On a tiled image: mask bool ``[y1 - y0, x1 - x0]`` at full resolution over ``box`` = (x0, y0, x1, y1)
    image pixels (empty outside it; None: the mask is the whole image); step: the reduction of the view it
    was decoded on (1 = full resolution); note: what happened; views_embedded: views embedded for this
    request (0 when every view came from memory or the on-disk cache).
    """

    request_id: int
    image_key: str
    mask: np.ndarray
    low_res_logits: np.ndarray | None
    score: float
    granularity: float | None
    seconds: float
    box: tuple[int, int, int, int] | None = None
    step: int = 1
    note: str = ""
    views_embedded: int = 0


@dataclass
class SweepDecoded:
    """masks bool ``[G, H, W]``; scores, areas ``[G]``; granularities in the order asked.

    With ``nest``: labels uint32 ``[G, H, W]`` the nested hierarchy (one object per non-empty level,
    ids unique across levels, each inside its parent) and its table rows
    label/level/granularity/parent/area/score; None otherwise.

    box: None for an ordinary image (masks and labels cover it whole); for a large (tiled) image the
    (x0, y0, x1, y1) image pixels that masks and labels cover (``[G, y1 - y0, x1 - x0]``): the union of
    the views the levels were decoded on. steps ``[G]``: each level's view reduction (1 = full
    resolution; tiled images only); note: what happened, for the user.
    """

    request_id: int
    image_key: str
    granularities: list[float]
    masks: np.ndarray
    scores: np.ndarray
    areas: np.ndarray
    seconds: float
    labels: np.ndarray | None = None
    table: list[dict] | None = None
    box: tuple[int, int, int, int] | None = None
    steps: list[int] | None = None
    note: str = ""


@dataclass
class Segmented:
    """labels ``[H, W]`` (1..N, larger objects painted first); scores, areas, stability ``[N]`` by label - 1.

    With ``want_masks``: masks bool ``[N, H, W]`` (overlaps kept) and points ``[N, 2]`` (x, y grid point of each).
    A tiled image: tiles_done of tiles_total (fewer after a cancel: the finished tiles' objects are kept);
    stability None; ``want_masks`` is refused.
    """

    request_id: int
    image_key: str
    granularity: float | None
    labels: np.ndarray
    scores: np.ndarray
    areas: np.ndarray
    seconds: float
    stability: np.ndarray | None = None
    masks: np.ndarray | None = None
    points: np.ndarray | None = None
    tiles_done: int | None = None
    tiles_total: int | None = None


@dataclass
class HierarchyBuilt:
    """labels ``[L, H, W]`` nested, ids unique across levels; table rows label/level/granularity/parent/area/score;
    masks_per_level: masks found per level before nesting (a tiled image: objects per level after
    stitching); tiles_done / tiles_total: as :class:`Segmented`'s.
    """

    request_id: int
    image_key: str
    granularities: list[float]
    labels: np.ndarray
    table: list[dict]
    seconds: float
    masks_per_level: list[int] | None = None
    tiles_done: int | None = None
    tiles_total: int | None = None


@dataclass
class Propagated:
    """labels: the stack's shape without channels (0 = background, object ids); scores, object_scores
    float32 ``[n_slices, n_objects]`` (predicted IoU, objectness logit; NaN where not computed), columns
    in ``object_ids`` order; frames_done bool ``[n_slices]`` (False only for slices a cancel left out);
    axis: the propagation axis of ``labels``.
    """

    request_id: int
    stack_key: str
    labels: np.ndarray
    scores: np.ndarray
    object_scores: np.ndarray
    object_ids: list[int]
    frames_done: np.ndarray
    axis: int
    cancelled: bool
    seconds: float


@dataclass
class FineTuned:
    """A fine-tuning run ended. adapter: the server path written (None when cancelled); steps of max_steps;
    final_loss; val: the last validation record (or None); checkpoint: the last checkpoint (resume from it);
    workdir: the run's folder on the server.
    """

    request_id: int
    adapter: str | None
    steps: int
    max_steps: int
    final_loss: float | None
    val: dict | None
    checkpoint: str | None
    workdir: str
    cancelled: bool
    seconds: float


@dataclass
class FineTuneEvent:
    """Progress of a :class:`FineTune` run: one event of the trainer (``{"event": "step", "step", "max_steps",
    "loss", ...}``, ``stage``, ``val``, ``checkpoint``; see ``docs/fine-tuning.md``), as plain JSON values.
    """

    request_id: int
    event: dict


@dataclass
class Progress:
    """Progress of a running request: ``done`` of ``total`` (None: unknown) in ``stage``."""

    request_id: int
    stage: str
    done: int
    total: int | None


@dataclass
class Failure:
    """A request that failed. ``kind`` is the exception class name; ``user_error`` marks input
    problems (an :class:`~unsamv2_engine.errors.UnSAMv2Error`: bad prompt, missing weights) as opposed
    to bugs, whose ``traceback`` holds the engine side's traceback text (empty for user errors).
    """

    request_id: int
    kind: str
    message: str
    user_error: bool
    traceback: str = ""


@dataclass
class Stopped:
    """The engine has stopped (the reply to :class:`Shutdown`)."""

    request_id: int


Reply = (ModelLoaded | ImageEmbedded | Decoded | SweepDecoded | Segmented | HierarchyBuilt | Propagated | FineTuned
         | FineTuneEvent | Progress | Failure | Stopped)


def describe(message: Any) -> str:
    """A short one-line description of a request or reply (logs, status bars)."""
    name = type(message).__name__
    key = getattr(message, "image_key", None)
    return f"{name}#{getattr(message, 'request_id', '?')}" + (f" [{key}]" if key else "")
