"""Label hierarchies: building, nesting, TIFF / zarr / plain-TIFF files (Qt-free, torch-free)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from unsamv2_engine.hierarchy import (
    Hierarchy,
    build_hierarchy,
    check_nesting,
    enforce_nesting,
    hierarchy_from_levels,
    sweep_hierarchy,
    table_rows_for_level,
)
from unsamv2_engine.io.hierarchy import FORMAT, is_hierarchy_file, read_hierarchy, to_csv, write_hierarchy

SHAPE = (64, 80)


def disc(cy: float, cx: float, r: float, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - cy, xx - cx) < r


# fine (nucleoli) -> middle (nuclei) -> coarse (cells)
NUCLEOLI = [disc(20, 20, 3), disc(24, 26, 2.5), disc(44, 56, 3)]
NUCLEI = [disc(22, 23, 9), disc(44, 56, 8)]
CELLS = [disc(32, 40, 34)]


def nested() -> Hierarchy:
    return build_hierarchy(
        [NUCLEOLI, NUCLEI, CELLS], [0.2, 0.5, 1.0], scores=[[0.9, 0.8, 0.7], None, [0.95]]
    )


def rows_equal(a: list[dict], b: list[dict]) -> bool:
    def norm(rows):
        return [
            {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in rows
        ]

    return norm(a) == norm(b)


def assert_same(h1: Hierarchy, h2: Hierarchy) -> None:
    assert h1.labels.shape == h2.labels.shape
    np.testing.assert_array_equal(h1.labels, h2.labels)
    assert h1.granularities == h2.granularities
    assert h1.level_names == h2.level_names
    assert rows_equal(h1.table, h2.table)


# --------------------------------------------------------------------------- building


def test_build_nested_discs_parents_and_areas():
    h = nested()
    assert h.labels.shape == (3, *SHAPE) and h.labels.dtype == np.uint16
    assert h.level_names == ["g=0.20", "g=0.50", "g=1.00"]
    # ids 1..6, level by level, in mask order
    assert [r["label"] for r in h.table] == [1, 2, 3, 4, 5, 6]
    assert [r["level"] for r in h.table] == [0, 0, 0, 1, 1, 2]
    assert h.parents == {1: 4, 2: 4, 3: 5, 4: 6, 5: 6, 6: 0}
    areas = [int(m.sum()) for m in NUCLEOLI + NUCLEI + CELLS]
    assert [r["area"] for r in h.table] == areas
    assert [r["score"] for r in h.table][:3] == [0.9, 0.8, 0.7]
    assert math.isnan(h.table[3]["score"]) and h.table[5]["score"] == 0.95
    assert [r["granularity"] for r in h.table] == [0.2, 0.2, 0.2, 0.5, 0.5, 1.0]
    assert check_nesting(h) == []
    assert sorted(h.children(4)) == [1, 2]


def test_parents_follow_granularity_not_list_order():
    h = build_hierarchy([CELLS, NUCLEOLI, NUCLEI], [1.0, 0.2, 0.5])
    # level 0 = cells (id 1), level 1 = nucleoli (2, 3, 4), level 2 = nuclei (5, 6)
    assert h.parents == {1: 0, 2: 5, 3: 5, 4: 6, 5: 1, 6: 1}
    assert h.coarseness_order() == [1, 2, 0]
    # without granularities, list order decides: later = coarser
    h = build_hierarchy([NUCLEOLI, NUCLEI, CELLS])
    assert h.parents == {1: 4, 2: 4, 3: 5, 4: 6, 5: 6, 6: 0}
    assert h.level_names == ["level 0", "level 1", "level 2"]


def test_containment_threshold():
    half_out = disc(30, 8, 8)  # about half of it lies left of the big disc's edge
    big = disc(30, 40, 32)
    frac = (half_out & big).sum() / half_out.sum()
    assert 0.3 < frac < 0.9
    assert build_hierarchy([[half_out], [big]], containment=frac - 0.01).parents[1] == 2
    assert build_hierarchy([[half_out], [big]], containment=frac + 0.01).parents[1] == 0


def test_label_images_are_relabelled_uniquely_and_overlaps_painted_small_on_top():
    fine = np.zeros(SHAPE, np.int32)
    fine[NUCLEI[0]] = 7
    fine[NUCLEI[1]] = 3
    coarse = CELLS[0].astype(np.uint8)
    h = build_hierarchy([fine, coarse], [0.4, 0.9], scores=[{7: 0.5, 3: 0.25}, None])
    assert h.parents == {1: 3, 2: 3, 3: 0}  # 3 -> 1, 7 -> 2 (increasing original id)
    assert [r["score"] for r in h.table[:2]] == [0.25, 0.5]
    # overlapping masks of one level: the smaller one stays whole
    small, large = disc(30, 30, 5), disc(30, 30, 15)
    h = build_hierarchy([[small, large]])
    assert [r["area"] for r in h.table] == [int(small.sum()), int((large & ~small).sum())]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="granularities"):
        build_hierarchy([NUCLEI, CELLS], [0.5])
    with pytest.raises(ValueError, match="same spatial shape"):
        build_hierarchy([NUCLEI, [disc(5, 5, 3, shape=(32, 32))]])
    with pytest.raises(ValueError, match="integers"):
        build_hierarchy([np.zeros(SHAPE, np.float32)])
    with pytest.raises(ValueError, match=r"\[L, \*spatial\]"):
        Hierarchy(labels=np.zeros(SHAPE, np.uint16))


# --------------------------------------------------------------------------- nesting


def test_enforce_nesting_clips_children_to_parents():
    sticking_out = disc(30, 62, 8)  # mostly inside the parent below, partly outside it
    parent = disc(30, 45, 20)
    h = build_hierarchy([[sticking_out], [parent]], [0.3, 0.8])
    assert h.parents[1] == 2
    problems = check_nesting(h)
    assert len(problems) == 1 and "outside its parent 2" in problems[0]

    fixed = enforce_nesting(h)
    assert check_nesting(fixed) == []
    child = fixed.labels[0] == 1
    assert not (child & ~parent).any()
    np.testing.assert_array_equal(child, sticking_out & parent)
    assert fixed.table[0]["area"] == int((sticking_out & parent).sum())
    assert h.labels[0].sum() > fixed.labels[0].sum()  # the input is not modified


def test_enforce_nesting_drops_vanished_objects_and_their_children():
    labels = np.zeros((3, *SHAPE), np.uint16)
    labels[2][disc(20, 20, 10)] = 1  # coarse
    labels[1][disc(50, 60, 6)] = 2  # claims parent 1 but lies outside it
    labels[0][disc(50, 60, 3)] = 3  # child of 2
    labels[0][disc(20, 20, 3)] = 4  # child of 1, fine
    table = [
        {"label": 1, "level": 2, "parent": 0, "area": int((labels[2] == 1).sum())},
        {"label": 2, "level": 1, "parent": 1, "area": int((labels[1] == 2).sum())},
        {"label": 3, "level": 0, "parent": 2, "area": int((labels[0] == 3).sum())},
        {"label": 4, "level": 0, "parent": 1, "area": int((labels[0] == 4).sum())},
    ]
    h = Hierarchy(labels=labels, granularities=[0.1, 0.5, 1.0], table=table)
    fixed = enforce_nesting(h)
    assert [r["label"] for r in fixed.table] == [1, 4]
    assert not (fixed.labels == 2).any() and not (fixed.labels == 3).any()
    assert check_nesting(fixed) == []


def test_sweep_hierarchy_nests_one_prompt_across_granularities():
    """A sweep (one mask per g, not nested pixel for pixel) becomes one object per non-empty level,
    each the child of the next coarser level's object (an empty level breaks the chain) and clipped inside it;
    levels keep the given order.
    """
    nucleus, cell = disc(22, 23, 9), disc(30, 30, 22)
    sticking_out = disc(22, 10, 6)  # partly outside the cell: clipped to it
    masks = np.stack([nucleus, np.zeros(SHAPE, bool), cell, sticking_out | nucleus])
    h = sweep_hierarchy(masks, [0.3, 0.5, 1.0, 0.7], scores=[0.9, 0.1, 0.8, 0.7])
    assert h.labels.shape == (4, *SHAPE) and h.granularities == [0.3, 0.5, 1.0, 0.7]
    assert check_nesting(h) == []
    rows = {r["level"]: r for r in h.table}
    assert sorted(rows) == [0, 2, 3]  # the empty level has no object
    assert rows[2]["parent"] == 0 and rows[3]["parent"] == rows[2]["label"]
    assert rows[0]["parent"] == 0  # its next coarser level (g 0.5) is empty: no parent, kept as it is
    assert rows[0]["score"] == pytest.approx(0.9) and rows[2]["area"] == int(cell.sum())
    np.testing.assert_array_equal(h.labels[3] > 0, (sticking_out | nucleus) & cell)
    np.testing.assert_array_equal(h.labels[0] > 0, nucleus)
    with pytest.raises(ValueError, match="one mask per granularity"):
        sweep_hierarchy(masks[:2], [0.3, 0.5, 1.0])


def test_check_nesting_flags_a_bad_hierarchy():
    h = nested()
    labels = h.labels.copy()
    labels[1][0:3, 0:3] = 1  # label 1 (level 0) also painted in level 1
    table = [dict(r) for r in h.table]
    table[3]["area"] += 5  # wrong area of label 4
    table[5]["parent"] = 1  # the coarsest object claims a finer parent
    table.append({"label": 99, "level": 0, "parent": 0, "area": 3})  # no pixels
    bad = Hierarchy(labels=labels, granularities=h.granularities, table=table)
    text = "\n".join(check_nesting(bad))
    assert "label 1 appears in levels 0 and 1" in text
    assert "label 4: the table says area" in text
    assert "label 6 (level 2): its parent 1 is on level 0, which is not coarser" in text
    assert "label 99 (level 0) has a table row but no pixels" in text


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".zarr"])
def test_round_trip(tmp_path, suffix):
    h = nested()
    h.metadata["source"] = "unit test"
    path = write_hierarchy(tmp_path / f"h{suffix}", h)
    assert is_hierarchy_file(path)
    back = read_hierarchy(path)
    assert_same(h, back)
    assert back.metadata == {"source": "unit test"}
    assert back.labels.dtype == np.uint16
    # overwriting works and leaves no partial file behind
    write_hierarchy(path, h)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"h{suffix}"]


def test_tiff_layout_and_sidecar_csv(tmp_path):
    h = nested()
    path = write_hierarchy(tmp_path / "h.tif", h, table_csv=True)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3
        meta = json.loads(tif.pages[0].description)
    assert meta["format"] == FORMAT and meta["version"] == 1
    assert meta["granularities"] == [0.2, 0.5, 1.0] and meta["shape"] == [3, *SHAPE]
    assert meta["table"][3]["score"] is None  # NaN is stored as null
    header = (tmp_path / "h.csv").read_text().splitlines()[0]
    assert header == "label,level,granularity,parent,area,score"


def test_3d_levels_round_trip_through_tiff(tmp_path):
    z = np.zeros((2, 4, 16, 16), np.uint16)
    z[1, 1:3, 2:12, 2:12] = 1
    z[0, 1:3, 4:8, 4:8] = 2
    h = hierarchy_from_levels(list(z), [0.3, 0.9])
    assert h.parents == {2: 1, 1: 0}
    assert_same(h, read_hierarchy(write_hierarchy(tmp_path / "z.tif", h)))
    assert_same(h, read_hierarchy(write_hierarchy(tmp_path / "z.zarr", h)))


def test_plain_multipage_tiff_is_read_with_recomputed_parents(tmp_path):
    pages = np.zeros((2, *SHAPE), np.uint8)
    pages[0][NUCLEI[0]] = 1  # per-level ids: both levels use label 1
    pages[0][NUCLEI[1]] = 2
    pages[1][CELLS[0]] = 1
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, pages, photometric="minisblack")
    assert not is_hierarchy_file(path)
    h = read_hierarchy(path)
    assert h.n_levels == 2 and h.granularities == [None, None]
    assert h.parents == {1: 3, 2: 3, 3: 0}  # relabelled uniquely, page order = fine -> coarse
    assert [r["area"] for r in h.table] == [int(NUCLEI[0].sum()), int(NUCLEI[1].sum()), int(CELLS[0].sum())]
    assert check_nesting(h) == []


def test_plain_tiff_with_sidecar_csv_keeps_ids_and_table(tmp_path):
    pages = np.zeros((2, *SHAPE), np.uint16)
    pages[0][NUCLEI[0]] = 10
    pages[0][NUCLEI[1]] = 11
    pages[1][CELLS[0]] = 20
    tifffile.imwrite(tmp_path / "plain.tif", pages, photometric="minisblack")
    (tmp_path / "plain.csv").write_text(
        "label,level,granularity,parent,area,score\n"
        "10,0,0.4,20,1,0.5\n"
        "11,0,0.4,,1,\n"
        "20,1,0.9,0,1,0.75\n"
    )
    h = read_hierarchy(tmp_path / "plain.tif")
    assert h.granularities == [0.4, 0.9] and h.level_names == ["g=0.40", "g=0.90"]
    assert h.parents == {10: 20, 11: 20, 20: 0}  # 11: empty parent cell -> recomputed
    assert h.table[0]["score"] == 0.5 and math.isnan(h.table[1]["score"])
    assert h.table[0]["area"] == int(NUCLEI[0].sum())  # recounted, not the CSV's 1


def test_table_helpers(tmp_path):
    h = nested()
    assert [r["label"] for r in table_rows_for_level(h, 1)] == [4, 5]
    assert [r["label"] for r in table_rows_for_level(h, -1)] == [6]
    path = to_csv(h, tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "label,level,granularity,parent,area,score"
    assert lines[4] == f"4,1,0.5,6,{int(NUCLEI[0].sum())},"  # NaN score -> empty cell


def test_file_errors(tmp_path):
    h = nested()
    with pytest.raises(ValueError, match=".tif, .tiff or .zarr"):
        write_hierarchy(tmp_path / "h.png", h)
    (tmp_path / "data.zarr").mkdir()
    (tmp_path / "data.zarr" / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="not a zarr store"):
        write_hierarchy(tmp_path / "data.zarr", h)
    assert (tmp_path / "data.zarr" / "keep.txt").exists()
    with pytest.raises(FileNotFoundError):
        read_hierarchy(tmp_path / "missing.tif")
    newer = {"format": FORMAT, "version": 99}
    tifffile.imwrite(tmp_path / "new.tif", h.labels, description=json.dumps(newer), metadata=None,
                     photometric="minisblack")
    with pytest.raises(ValueError, match="version 99"):
        read_hierarchy(tmp_path / "new.tif")


def test_io_hierarchy_still_exports_the_data_model_and_algorithms():
    """Older code imported everything from ``unsamv2_engine.io.hierarchy``: those names still work."""
    import unsamv2_engine.hierarchy as algorithms
    from unsamv2_engine.io import hierarchy as files

    for name in ("Hierarchy", "build_hierarchy", "check_nesting", "enforce_nesting", "hierarchy_from_levels",
                 "table_rows_for_level", "granularity_from_name", "default_level_name", "TABLE_COLUMNS"):
        assert getattr(files, name) is getattr(algorithms, name), name
