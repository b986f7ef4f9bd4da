"""Tile-parallel evaluation of the joint objective on a Dask cluster.

The joint objective (``docs/joint.md``) is a sum over scan positions plus data-free
regularisers, so its value and gradient are exactly the sums of per-tile values and gradients
when every position is counted in exactly one tile (the "exact data-parallel" decomposition:
an all-reduce of gradients, as in Nashed et al., "Distributed automatic differentiation for
ptychography", Procedia Comput. Sci. 108, 404 (2017); the spatial split of the positions is that
of Nashed et al., Opt. Express 22, 32082 (2014)). :func:`distribute` splits the positions into
spatial tiles (:func:`xmulti.ptycho.tiles.split_tiles` with no halo: each position has one own
tile), gives each tile the sub-grid that holds its probe windows and builds a
:class:`~xmulti.joint.problem.JointProblem` for it on a worker. A tile's frames are read once, on
its worker (from the lazy scan's graph, or scattered when they are in memory) and stay there;
each evaluation sends only the tile's crop of ``t``, ``c`` and the probe, and brings back the
tile's data terms and its gradients on its sub-grid. The driver adds them into full-grid arrays
and adds the regularisers once. L-BFGS stays on the driver (:func:`xmulti.joint.solve.solve`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..ptycho.fft import FFT2
from ..ptycho.tiles import split_tiles
from .problem import FrameSource, JointProblem

__all__ = ["TilePart", "DistributedJointProblem", "distribute", "tile_grid", "split_positions"]


@dataclass(frozen=True)
class TilePart:
    """One tile of the joint objective.

    Attributes
    ----------
    members : ndarray (M_t,) int
        Indices (sorted) of the scan positions counted in this tile (each in one tile only).
    offset : (int, int)
        Full-grid index (y, x) of the sub-grid's pixel (0, 0).
    shape : (int, int)
        Sub-grid shape: the bounding box of the members' probe windows.
    """

    members: np.ndarray
    offset: tuple[int, int]
    shape: tuple[int, int]

    @property
    def window(self) -> tuple[slice, slice]:
        """The sub-grid as slices of the full (y, x) grid."""
        (y0, x0), (h, w) = self.offset, self.shape
        return slice(y0, y0 + h), slice(x0, x0 + w)


def tile_grid(tiles: Any, n_workers: int, positions_px: np.ndarray, n: int) -> tuple[int, int]:
    """The tile grid ``(ny, nx)`` for a ``tiles`` request.

    Parameters
    ----------
    tiles : None, int or (int, int)
        None: one tile per worker (at most one per position); an int: that many tiles, on the factorisation ``ny * nx`` whose
        tiles are closest to square on the scanned area; a pair: the grid itself.
    n_workers : int
        Workers of the cluster (for ``tiles=None``).
    positions_px : ndarray (M, 2)
        Beam centres (fractional object indices, (y, x)).
    n : int
        Probe window width (pixels).

    Returns
    -------
    (int, int)
    """
    m = len(positions_px)
    if tiles is None:
        tiles = max(1, min(int(n_workers), m))
    if isinstance(tiles, (bool, np.bool_)) or not isinstance(tiles, (int, np.integer, tuple, list)):
        raise InvalidInputError(f"tiles must be None, a positive int or a pair (ny, nx) of them, got {tiles!r}")
    if isinstance(tiles, (tuple, list)):
        ok = len(tiles) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in tiles)
        if not ok or min(tiles) < 1:
            raise InvalidInputError(f"tiles must be a pair (ny, nx) of positive ints, got {tiles!r}")
        grid = (int(tiles[0]), int(tiles[1]))
    else:
        count = int(tiles)
        if count < 1:
            raise InvalidInputError(f"tiles must be a positive number of tiles, got {count}")
        # tiles close to square keep the windows that straddle tile borders (read twice) few
        extent = np.ptp(positions_px, axis=0) + n
        aspect = float(extent[0] / extent[1])
        pairs = [(d, count // d) for d in range(1, count + 1) if count % d == 0]
        grid = min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(aspect)))
    if grid[0] * grid[1] > m:
        raise InvalidInputError(f"{grid[0] * grid[1]} tiles ({grid[0]} x {grid[1]}) for only {m} scan positions")
    return grid


def split_positions(problem: JointProblem, grid: tuple[int, int]) -> list[TilePart]:
    """Split the problem's positions into spatial tiles, each position in exactly one.

    The split is that of :func:`xmulti.ptycho.tiles.split_tiles` (equal-count bands along y and
    x) without a halo: a tile counts only its own positions, so no term of the objective is
    counted twice. Each tile's sub-grid is the bounding box of its probe windows (the windows
    are self-contained: nothing outside them enters a position's terms). Tiles left without a
    position (duplicate positions on a band edge) are dropped.
    """
    n = problem.probe.shape[-1]
    parts = []
    for tile in split_tiles(problem.positions_px, n, problem.shape, grid=grid, halo_px=0.0, margin_px=0):
        members = np.sort(tile.members[tile.own])
        if members.size == 0:
            continue
        corners = problem.corners[members]
        lo = corners.min(axis=0)
        hi = corners.max(axis=0) + n
        parts.append(TilePart(members, (int(lo[0]), int(lo[1])), (int(hi[0] - lo[0]), int(hi[1] - lo[1]))))
    return parts


def _worker_fft() -> FFT2:
    """FFTs with as many threads as the worker running the task has (they share the cores)."""
    try:
        from dask.distributed import get_worker

        return FFT2(np, max(1, int(get_worker().state.nthreads)))
    except (ImportError, ValueError, AttributeError):
        return FFT2(np)


def _build_tile(counts: np.ndarray, mask: np.ndarray, spec: dict) -> JointProblem:
    """Task: a tile's JointProblem on its worker, its frames prepared once and kept there."""
    spec = dict(spec)  # the task's arguments stay as given (a recomputed task sees the same)
    frames = FrameSource(counts, mask, spec.pop("batch"), max_bytes=math.inf)
    return JointProblem(frames=frames, fft=_worker_fft(), **spec)


def _evaluate_tile(tile: JointProblem, t_um: np.ndarray, c_ug_cm2: np.ndarray, probe: np.ndarray,
                   refine_probe: bool) -> tuple[float, float, dict]:
    """Task: a tile's data terms and gradients on its sub-grid.

    The probe is sent with every call (and set before evaluating), so the result depends only
    on the arguments, not on what an earlier call left on the worker.
    """
    if refine_probe:
        _, grads, terms = tile.evaluate(t_um, c_ug_cm2, probe)
    else:
        tile.set_probe(probe)
        _, grads, terms = tile.evaluate(t_um, c_ug_cm2)
    return terms["ptycho"], terms["xrf"], grads


def _tile_curvatures(tile: JointProblem, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Task: a tile's curvature scales (:meth:`JointProblem.curvatures`) on its sub-grid."""
    tile.set_probe(probe)
    return tile.curvatures()


class DistributedJointProblem:
    """A :class:`~xmulti.joint.problem.JointProblem` evaluated tile by tile on Dask workers.

    Made by :func:`distribute`. It has what :func:`xmulti.joint.solve.solve` uses of a problem
    (``evaluate``, ``curvatures``, ``shape``, ``object_model``, ``smooth_scale``, ``probe``,
    ``positions_px``, ``set_probe``, ``evaluations``); any other attribute is that of the wrapped
    full problem (``full``), which holds the regularisers and the current probe. The tiles'
    problems stay on the workers until :meth:`close` (or until this object is dropped).

    Attributes
    ----------
    full : JointProblem
    client : dask.distributed.Client
    parts : list of TilePart
    evaluations : int
    """

    def __init__(self, full: JointProblem, client: Any, parts: list[TilePart], tiles: list, workers: list[str]):
        self.full = full
        self.client = client
        self.parts = parts
        self._tiles = tiles
        self._workers = workers
        self.evaluations = 0

    # -- what solve() reads, from the full problem ----------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self.full.shape

    @property
    def object_model(self):
        return self.full.object_model

    @property
    def smooth_scale(self):
        return self.full.smooth_scale

    @property
    def positions_px(self) -> np.ndarray:
        return self.full.positions_px

    @property
    def probe(self) -> np.ndarray:
        return self.full.probe

    def set_probe(self, probe: np.ndarray) -> None:
        """Replace the probe modes (K, N, N); every tile gets them with its next task."""
        self.full.set_probe(probe)

    def __getattr__(self, name: str) -> Any:
        if name == "full":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.full, name)

    # -- tile tasks -----------------------------------------------------------------------------
    def _submit(self, func, *per_tile_args) -> list:
        """One task per tile, preferably on the worker that holds the tile (a lost worker's tile
        is rebuilt elsewhere from its graph)."""
        if not self._tiles:
            raise InvalidInputError("this DistributedJointProblem was closed: distribute the problem again")
        return [
            self.client.submit(func, tile, *args, workers=[worker], allow_other_workers=True, pure=False)
            for tile, worker, args in zip(self._tiles, self._workers, zip(*per_tile_args, strict=True), strict=True)
        ]

    def curvatures(self) -> tuple[np.ndarray, np.ndarray]:
        """Diagonal Gauss-Newton curvature scales, as :meth:`JointProblem.curvatures`: the tiles'
        illumination (H, W) and XRF curvature (E, H, W) added on the full grid."""
        probe = [self.full.probe] * len(self.parts)
        results = self.client.gather(self._submit(_tile_curvatures, probe))
        illum = np.zeros(self.full.shape)
        xrf = np.zeros((self.full.n_elements,) + tuple(self.full.shape))
        for part, (il, xc) in zip(self.parts, results, strict=True):
            ys, xs = part.window
            illum[ys, xs] += il
            xrf[:, ys, xs] += xc
        return illum, xrf

    def evaluate(
        self, t_um: np.ndarray, c_ug_cm2: np.ndarray, probe: np.ndarray | None = None
    ) -> tuple[float, dict, dict]:
        """Objective, its gradients and its terms, as :meth:`JointProblem.evaluate`.

        Each tile evaluates its positions' ptychographic and XRF terms on its sub-grid; the
        values and probe gradients are summed, the sub-grid gradients added into the full grid
        (in tile order, so the result does not depend on which tile finishes first), and the
        regularisers of the full problem added once. Parameters and returns as
        :meth:`JointProblem.evaluate`.
        """
        t_um = np.asarray(t_um, dtype=float)
        c_ug_cm2 = np.asarray(c_ug_cm2, dtype=float)
        if t_um.shape != tuple(self.full.shape) or c_ug_cm2.shape != (self.full.n_elements,) + tuple(self.full.shape):
            raise InvalidInputError(
                f"t {t_um.shape} and c {c_ug_cm2.shape} do not match the grid {tuple(self.full.shape)} "
                f"and {self.full.n_elements} elements"
            )
        if probe is not None:
            self.set_probe(probe)
        windows = [part.window for part in self.parts]
        # contiguous crops: only the tile's pixels are serialised
        t_parts = [np.ascontiguousarray(t_um[ys, xs]) for ys, xs in windows]
        c_parts = [np.ascontiguousarray(c_ug_cm2[:, ys, xs]) for ys, xs in windows]
        count = len(self.parts)
        futures = self._submit(_evaluate_tile, t_parts, c_parts, [self.full.probe] * count, [probe is not None] * count)
        results = self.client.gather(futures)
        loss_p = loss_x = 0.0
        grad_t = np.zeros(self.full.shape)
        grad_c = np.zeros_like(c_ug_cm2)
        grad_probe = np.zeros(self.full.probe.shape, complex) if probe is not None else None
        for (ys, xs), (lp, lx, grads) in zip(windows, results, strict=True):
            loss_p += lp
            loss_x += lx
            grad_t[ys, xs] += grads["t"]
            grad_c[:, ys, xs] += grads["c"]
            if grad_probe is not None:
                grad_probe += grads["probe"]
        reg, reg_t, reg_c = self.full.regularisers(t_um, c_ug_cm2)
        self.evaluations += 1
        out = {"t": grad_t + reg_t, "c": grad_c + reg_c}
        if grad_probe is not None:
            out["probe"] = grad_probe
        value = loss_p + self.full.xrf_weight * loss_x + reg
        return value, out, {"ptycho": loss_p, "xrf": loss_x, "smoothness": reg}

    def close(self) -> None:
        """Release the tiles' problems (and their frames) on the workers."""
        for tile in self._tiles:
            tile.release()
        self._tiles = []

    def __enter__(self) -> DistributedJointProblem:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def distribute(problem: JointProblem, client: Any, tiles: Any = None) -> DistributedJointProblem:
    """Evaluate a joint problem tile-parallel on a Dask cluster.

    Parameters
    ----------
    problem : JointProblem
        The full problem (from :func:`xmulti.joint.setup.build_problem`); it keeps the
        regularisers and the probe, and is not modified.
    client : dask.distributed.Client
        The cluster the tiles live on.
    tiles : None, int or (int, int)
        None: one tile per worker; an int: that many tiles; a pair: the tile grid (ny, nx).

    Returns
    -------
    DistributedJointProblem
        A drop-in for ``problem`` in :func:`xmulti.joint.solve.solve`.

    Notes
    -----
    Each tile's frames are read once, by a task on the worker the tile is given to: from the
    lazy (path-based) Dask array's graph when the scan's frames are lazy, which a lost worker
    recomputes, or scattered to it from memory otherwise (then lost with that worker). Memory
    per worker: its tiles' frames as float32 amplitudes plus a sub-grid's arrays. Tiles are given
    to the workers in turn.
    """
    if client is None or not hasattr(client, "submit"):
        raise InvalidInputError("distribute needs a dask.distributed Client")
    if not isinstance(problem, JointProblem):
        raise InvalidInputError(f"distribute needs a JointProblem, got {type(problem).__name__}")
    from ..worker_memory import tune_workers

    tune_workers(client)  # a client made elsewhere: its workers' allocator settings
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        raise InvalidInputError("the Dask cluster has no workers")
    n = problem.probe.shape[-1]
    grid = tile_grid(tiles, len(workers), problem.positions_px, n)
    parts = split_positions(problem, grid)
    counts, mask = problem.frames.counts, problem.frames.mask
    lazy = hasattr(counts, "dask")
    if lazy:
        import dask

    futures, owners = [], []
    for i, part in enumerate(parts):
        worker = workers[i % len(workers)]
        if lazy:
            (sub,) = dask.optimize(counts[part.members])  # culled: this tile's chunks only
            source = client.compute(sub, workers=[worker], allow_other_workers=True)
        else:
            source = client.scatter(np.asarray(counts)[part.members], workers=[worker])
        spec = dict(
            shape=part.shape,
            probe=problem.probe,
            positions_px=problem.positions_px[part.members] - np.asarray(part.offset, float),
            object_model=problem.object_model,
            absorption=problem.absorption,
            xrf_data=problem.xrf_data[part.members],
            xrf_sigma=problem.xrf_sigma[part.members],
            sensitivity=problem.sensitivity,
            xrf_weight=problem.xrf_weight,
            noise=problem.noise,
            xrf_noise=problem.xrf_noise,
            xrf_count_scale=problem.xrf_count_scale,  # the whole scan's, not the tile's estimate
            complex_dtype=problem.complex_dtype,
            batch=problem.frames.batch,
        )
        futures.append(client.submit(_build_tile, source, mask, spec, workers=[worker], allow_other_workers=True,
                                     pure=False))
        owners.append(worker)
    # fail here, with the worker's error, rather than at the first evaluation (the tiles
    # themselves stay on the workers)
    from dask.distributed import wait

    wait(futures)
    for future in futures:
        if future.status == "error":
            future.result()
    return DistributedJointProblem(problem, client, parts, futures, owners)
