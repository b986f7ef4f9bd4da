"""Tiling of scan positions and stitching of tile objects (pure kernels)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from xmulti.errors import InvalidInputError
from xmulti.ptycho.stitch import stitch
from xmulti.ptycho.tiles import choose_grid, core_distance_px, split_tiles

SHAPE = (160, 170)
N = 32


@pytest.fixture(scope="module")
def truth_and_positions():
    rng = np.random.default_rng(0)
    phase = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 4)
    phase *= 0.5 / phase.std()
    truth = (np.exp(-0.1 * np.abs(phase)) * np.exp(1j * phase)).astype(np.complex64)
    yy, xx = np.meshgrid(np.arange(20, SHAPE[0] - 20, 6.0), np.arange(20, SHAPE[1] - 20, 6.0), indexing="ij")
    positions = np.stack([yy.ravel(), xx.ravel()], axis=1) + rng.normal(0, 0.3, (yy.size, 2))
    return truth, positions


@pytest.mark.parametrize("method, grid", [("grid", (2, 2)), ("grid", (3, 3)), ("kmeans", (2, 3))])
def test_every_position_has_one_own_tile_and_halo_members(truth_and_positions, method, grid):
    _, positions = truth_and_positions
    halo = 12.0
    tiles = split_tiles(positions, N, SHAPE, grid=grid, halo_px=halo, method=method)
    assert len(tiles) == grid[0] * grid[1]
    own_count = np.zeros(len(positions), int)
    for tile in tiles:
        own_count[tile.members[tile.own]] += 1
        distance = core_distance_px(tile, positions)
        # members are exactly the positions within the halo of the core
        np.testing.assert_array_equal(tile.members, np.flatnonzero(distance <= halo))
        assert np.all(distance[tile.members[tile.own]] == 0)
        # the tile array holds every member's probe window
        corners = np.floor(positions[tile.members] - N // 2).astype(int)
        assert np.all(corners >= tile.offset)
        assert np.all(corners + N <= np.add(tile.offset, tile.shape))
    assert np.all(own_count == 1)
    # halo positions exist: tiles overlap
    assert sum(len(t.members) for t in tiles) > len(positions)


@pytest.mark.parametrize("method, grid", [("grid", (2, 2)), ("grid", (3, 3)), ("kmeans", (2, 3))])
def test_stitching_removes_offsets_ramps_and_scales(truth_and_positions, method, grid):
    truth, positions = truth_and_positions
    rng = np.random.default_rng(1)
    tiles = split_tiles(positions, N, SHAPE, grid=grid, halo_px=12.0, method=method)
    objects, illuminations = [], []
    for k, tile in enumerate(tiles):
        region = tuple(slice(o, o + s) for o, s in zip(tile.offset, tile.shape, strict=True))
        iy, ix = np.indices(tile.shape) + np.reshape(tile.offset, (2, 1, 1))
        # tile 0 keeps the gauge; the others get a random offset (any size), ramp and scale
        theta, g, scale = (0.0, (0.0, 0.0), 1.0) if k == 0 else (
            rng.uniform(-3, 3), rng.normal(0, 0.01, 2), rng.uniform(0.8, 1.2))
        objects.append(truth[region] * scale * np.exp(1j * (theta + g[0] * iy + g[1] * ix)))
        illum = np.zeros(tile.shape)
        for p in positions[tile.members]:
            illum += np.exp(-((iy - p[0]) ** 2 + (ix - p[1]) ** 2) / (2 * 8.0**2))
        illuminations.append(illum)
    obj, corrections, total = stitch(objects, tiles, illuminations, 12.0, SHAPE)
    covered = total > 1e-3 * total.max()
    np.testing.assert_allclose(obj[covered], truth[covered], atol=2e-5)
    assert abs(corrections[0].theta) < 1e-9


def test_choose_grid_follows_workers_memory_and_aspect():
    assert choose_grid(2, 10_000, 65536, 8e9) == (1, 2)
    ty, tx = choose_grid(4, 10_000, 65536, 8e9)
    assert ty * tx >= 4
    # tiny memory per worker forces more tiles: each tile's frames <= a quarter of a worker
    ty, tx = choose_grid(2, 10_000, 65536, 1e8)
    assert 10_000 / (ty * tx) * 65536 <= 0.25e8 * 1.01
    ty, tx = choose_grid(8, 10_000, 65536, 8e9, aspect=2.0)
    assert ty > tx


def test_bad_tiling_input(truth_and_positions):
    _, positions = truth_and_positions
    with pytest.raises(InvalidInputError, match="tiling method"):
        split_tiles(positions, N, SHAPE, grid=(2, 2), method="hexagons")
    with pytest.raises(InvalidInputError, match="halo"):
        split_tiles(positions, N, SHAPE, grid=(2, 2), halo_px=-1)
    with pytest.raises(InvalidInputError, match="positions must be"):
        split_tiles(positions[:, :1], N, SHAPE, grid=(2, 2))


def _tile_copies(truth, tiles, positions, rng, misaligned):
    """Each tile's view of the truth (with a random offset, ramp and scale when ``misaligned``)
    and a Gaussian-beam illumination of its members."""
    objects, illuminations = [], []
    for k, tile in enumerate(tiles):
        region = tuple(slice(o, o + s) for o, s in zip(tile.offset, tile.shape, strict=True))
        iy, ix = np.indices(tile.shape) + np.reshape(tile.offset, (2, 1, 1))
        theta, g, scale = (0.0, (0.0, 0.0), 1.0) if k == 0 or not misaligned else (
            rng.uniform(0.5, 1.5) * rng.choice([-1, 1]), rng.normal(0, 0.01, 2), rng.uniform(0.8, 1.2))
        objects.append(truth[region] * scale * np.exp(1j * (theta + g[0] * iy + g[1] * ix)))
        illum = np.zeros(tile.shape)
        for p in positions[tile.members]:
            illum += np.exp(-((iy - p[0]) ** 2 + (ix - p[1]) ** 2) / (2 * 8.0**2))
        illuminations.append(illum)
    return objects, illuminations


@pytest.mark.parametrize("grid", [(2, 2), (3, 3)])
def test_seam_ratio_is_one_for_a_seamless_stitch_and_flags_a_misaligned_one(truth_and_positions, grid):
    from xmulti.ptycho.seams import seam_ratio
    from xmulti.ptycho.stitch import blend_tiles, tile_weight

    truth, positions = truth_and_positions
    halo = 12.0
    tiles = split_tiles(positions, N, SHAPE, grid=grid, halo_px=halo)
    objects, illuminations = _tile_copies(truth, tiles, positions, np.random.default_rng(4), misaligned=True)
    stitched, _, total = stitch(objects, tiles, illuminations, halo, SHAPE)
    region = (total > 0.3 * total.max()).astype(float)
    assert seam_ratio(stitched, tiles, region, 3.0, reference=truth) == pytest.approx(1.0, abs=0.01)
    # the same tiles blended without the alignment: offsets of 0.5-1.5 rad between neighbours
    weights = [tile_weight(t, ill, halo) for t, ill in zip(tiles, illuminations, strict=True)]
    naive, _ = blend_tiles(objects, tiles, weights, SHAPE)
    for band in (3.0, halo):
        assert seam_ratio(naive, tiles, region, band, reference=truth) > 1.5


def test_seam_ratio_rejects_a_region_without_boundaries(truth_and_positions):
    from xmulti.ptycho.seams import seam_ratio

    truth, positions = truth_and_positions
    one = split_tiles(positions, N, SHAPE, grid=(1, 1), halo_px=12.0)
    with pytest.raises(InvalidInputError, match="no core boundary"):
        seam_ratio(truth, one, np.ones(SHAPE), 3.0)
    with pytest.raises(InvalidInputError, match="same shape"):
        seam_ratio(truth, one, np.ones((4, 4)), 3.0)


@pytest.mark.parametrize("case", ["normal", "ties", "rounded", "nan"])
def test_masked_percentile_of_dask_arrays_is_numpys(case, monkeypatch):
    """The exact percentile by histogram refinement (what normalises a stitched object block by
    block) equals np.percentile, with ties, repeated values and NaN, in several passes."""
    import dask
    import dask.array as da

    import xmulti.ptycho.lazy_result as lazy

    monkeypatch.setattr(lazy, "_GATHER", 100)  # force refinement passes on a small image
    rng = np.random.default_rng(3)
    values = rng.normal(size=(150, 210)).astype(np.float32)
    if case == "ties":
        values[:100] = 0.25
    elif case == "rounded":
        values = np.round(values, 1)
    elif case == "nan":
        values[5, 5] = np.nan
    mask = rng.random(values.shape) > 0.3
    chunks = (64, 100)
    for q in (0.0, 2.0, 50.0, 98.0, 100.0):
        found = lazy.masked_percentile(da.from_array(values, chunks=chunks), da.from_array(mask, chunks=chunks), q,
                                       dask.compute)
        expected = np.percentile(values[mask & np.isfinite(values)].astype(np.float64), q)
        assert found == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_illumination_blocks_equal_the_whole_map(truth_and_positions):
    import dask.array as da

    from xmulti.ptycho.lazy_result import illumination_blocks
    from xmulti.ptycho.reconstruct import illumination_map

    _, positions = truth_and_positions
    probe = np.exp(-np.add.outer(*(2 * [(np.arange(N) - N // 2) ** 2])) / 50.0)[None].astype(np.complex64)
    lazy = illumination_blocks(probe, positions, SHAPE, 48)
    assert isinstance(lazy, da.Array) and lazy.chunks[0][0] == 48
    np.testing.assert_array_equal(lazy.compute(), illumination_map(probe, positions, SHAPE))


def test_lazy_result_dataset_equals_the_in_memory_one(truth_and_positions):
    """Normalisation (phase and amplitude 98th percentiles on the illuminated region), images and
    probe of the block-by-block result: those of reconstruct's result_dataset on the whole object."""
    import dask
    import dask.array as da

    from xmulti.ptycho.lazy_result import lazy_result_dataset
    from xmulti.ptycho.reconstruct import result_dataset

    truth, positions = truth_and_positions
    obj = (truth * np.complex64(0.8 * np.exp(0.7j))).astype(np.complex64)
    probe = np.exp(-np.add.outer(*(2 * [(np.arange(N) - N // 2) ** 2])) / 50.0)[None].astype(np.complex64)
    args = (probe, positions, [0.3, 0.2], np.array([-1.0, 2.0]), 0.01, positions * 0.01 - 1.0, {"engine": "lsqml"})
    expected = result_dataset(obj, *args)
    found = lazy_result_dataset(da.from_array(obj, chunks=48), *args, compute=dask.compute, block=48)
    assert isinstance(found["phase"].data, da.Array) and found["phase"].data.chunks[0][0] == 48
    found = found.compute()
    for name in ("phase", "amplitude", "illumination"):
        assert found[name].dtype == expected[name].dtype
        np.testing.assert_allclose(found[name], expected[name], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(found["probe"], expected["probe"], rtol=1e-5)
    assert found.attrs == expected.attrs
    for name in expected.variables:
        np.testing.assert_allclose(found[name].values, expected[name].values, rtol=1e-5, atol=1e-5)
