"""The footprint operator of resolution bridging: ``A c = sum_n I(r_n - p_j) c(r_n)`` (pure kernels).

The signal of an element at scan position ``j`` is the footprint-weighted sum of its map ``c``
on the object (phase) grid, ``I`` the probe intensity normalised to sum 1 (mixed modes add;
:func:`xmulti.footprint.probe_intensity`), ``p_j`` the beam centre. With that normalisation ``c``
is in the units of the XRF map: a uniform sample of value ``c`` gives ``b = c``.

:class:`FootprintOperator` applies ``A`` matrix-free: a zero-padded FFT correlation of ``c`` with
``I`` (the footprint sum at every integer beam position) sampled bilinearly at the fractional
beam positions; two real FFTs of the padded grid per application. :func:`footprint_matrix` is
the same operator as a sparse matrix (one row per position, the footprint's support), for
estimators that work with a few thousand unknowns.

Per-position footprints: an intensity stack ``(P, N, M)`` (a probe that changes along the scan,
e.g. a variable-probe reconstruction, Odstrcil et al., Opt. Express 26, 3108 (2018)) gives each
row its own footprint. The FFT correlation then no longer applies; the operator is the sparse
matrix (numpy only), with the same interface.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

__all__ = ["FootprintOperator", "forward_operator", "footprint_matrix", "footprint_rows", "mean_footprint",
           "poisson_deviance"]


def footprint_rows(intensity, rows):
    """The footprints of some positions: ``intensity[rows]`` of a per-position stack ``(P, N, M)``,
    the shared footprint ``(N, M)`` itself."""
    return intensity[rows] if np.ndim(intensity) == 3 else intensity


def mean_footprint(intensity) -> np.ndarray:
    """The footprint averaged over positions (a per-position stack), or the shared one."""
    arr = np.asarray(intensity, dtype=float)
    return arr.mean(axis=0) if arr.ndim == 3 else arr


class FootprintOperator:
    """``A c = sum_n I(r_n - p_j) c(r_n)`` and its adjoint on an object grid (pure numpy/cupy).

    Parameters
    ----------
    intensity : ndarray (N, M) or (P, N, M)
        Probe intensity normalised to sum 1, beam centre at pixel ``(N//2, M//2)``; a stack: one
        footprint per position (applied as a sparse matrix, numpy only).
    positions_px : ndarray (P, 2)
        Beam centres as fractional object-pixel indices (y, x): ``(p - origin) / dx``.
    shape : (ny, nx)
        Object grid shape.
    xp : module
        numpy or cupy.
    """

    def __init__(self, intensity, positions_px, shape: tuple[int, int], xp=np):
        from scipy import fft as sfft

        self.xp = xp
        self.shape = (int(shape[0]), int(shape[1]))
        ny, nx = self.shape
        self._matrix = None
        if np.ndim(intensity) == 3:
            if xp is not np:
                raise InvalidInputError("per-position footprints are applied as a sparse matrix: numpy only")
            self._matrix = footprint_matrix(intensity, positions_px, self.shape)
            self._matrix_t = self._matrix.T.tocsr()
            self.n_positions = self._matrix.shape[0]
            n, m = np.shape(intensity)[1:]
            self.padded = (sfft.next_fast_len(ny + n - 1, real=True), sfft.next_fast_len(nx + m - 1, real=True))
            self.n_ffts = 0
            return
        kernel = xp.asarray(intensity, dtype=float)
        if kernel.ndim != 2:
            raise InvalidInputError(f"a footprint must be (N, M) or (P, N, M), not shape {tuple(kernel.shape)}")
        n, m = kernel.shape
        self.padded = (sfft.next_fast_len(ny + n - 1, real=True), sfft.next_fast_len(nx + m - 1, real=True))
        # correlation with I = convolution with I flipped; output q sits at q + (N - 1 - N//2)
        self._khat = xp.fft.rfft2(kernel[::-1, ::-1], s=self.padded)
        self._offset = (n - 1 - n // 2, m - 1 - m // 2)
        pos = xp.asarray(positions_px, dtype=float)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise InvalidInputError(f"positions must be (P, 2) fractional (y, x) indices, not shape {tuple(pos.shape)}")
        if bool(xp.any((pos < 0) | (pos[:, :1] > ny - 1) | (pos[:, 1:] > nx - 1))):
            raise InvalidInputError(
                f"beam positions fall outside the object grid ({ny} x {nx} pixels): check positions and grid"
            )
        # bilinear sampling weights of the four neighbours of each beam centre
        i0 = xp.clip(xp.floor(pos).astype(int), 0, xp.asarray([ny - 2, nx - 2]))
        w = pos - i0
        self._index = xp.stack(
            [i0[:, 0] * nx + i0[:, 1], i0[:, 0] * nx + i0[:, 1] + 1,
             (i0[:, 0] + 1) * nx + i0[:, 1], (i0[:, 0] + 1) * nx + i0[:, 1] + 1], axis=1
        )
        self._weight = xp.stack(
            [(1 - w[:, 0]) * (1 - w[:, 1]), (1 - w[:, 0]) * w[:, 1], w[:, 0] * (1 - w[:, 1]), w[:, 0] * w[:, 1]], axis=1
        )
        self.n_positions = pos.shape[0]
        self.n_ffts = 0  # FFTs done so far (2 per application): the floor of benchmarks

    @property
    def per_position(self) -> bool:
        """Whether each position has its own footprint (the sparse-matrix form)."""
        return self._matrix is not None

    def blur(self, c):
        """Footprint-weighted sum at every integer beam position of the grid: ``(ny, nx)``
        (a shared footprint only)."""
        if self.per_position:
            raise InvalidInputError("per-position footprints have no shared blur")
        xp = self.xp
        ny, nx = self.shape
        oy, ox = self._offset
        out = xp.fft.irfft2(xp.fft.rfft2(c, s=self.padded) * self._khat, s=self.padded)
        self.n_ffts += 2
        return out[oy : oy + ny, ox : ox + nx]

    def blur_adjoint(self, h):
        """Adjoint of :meth:`blur`."""
        xp = self.xp
        ny, nx = self.shape
        oy, ox = self._offset
        pad = xp.zeros(self.padded)
        pad[oy : oy + ny, ox : ox + nx] = h
        out = xp.fft.irfft2(xp.fft.rfft2(pad) * xp.conj(self._khat), s=self.padded)
        self.n_ffts += 2
        return out[:ny, :nx]

    def forward(self, c):
        """``A c``: (ny, nx) -> (P,)."""
        if self.per_position:
            return self._matrix @ np.asarray(c, dtype=float).ravel()
        g = self.blur(c).ravel()
        return (g[self._index] * self._weight).sum(axis=1)

    def adjoint(self, b):
        """``A^T b``: (P,) -> (ny, nx)."""
        xp = self.xp
        ny, nx = self.shape
        if self.per_position:
            return (self._matrix_t @ np.asarray(b, dtype=float)).reshape(ny, nx)
        flat = xp.bincount(self._index.ravel(), weights=(self._weight * xp.asarray(b, dtype=float)[:, None]).ravel(),
                           minlength=ny * nx)
        return self.blur_adjoint(flat.reshape(ny, nx))


def forward_operator(intensity, positions_px, shape, xp=np) -> FootprintOperator:
    """The footprint operator ``A`` of a probe intensity at fractional positions (see
    :class:`FootprintOperator`)."""
    return FootprintOperator(intensity, positions_px, shape, xp=xp)


def footprint_matrix(intensity: np.ndarray, positions_px: np.ndarray, shape: tuple[int, int]):
    """``A`` as a ``scipy.sparse`` CSR matrix ``(P, ny * nx)``, equal to :class:`FootprintOperator`.

    Row ``j`` is the footprint at the beam centre: the bilinear mix of the footprints at the four
    integer neighbours of the fractional position (as the operator samples its correlation),
    cut at the grid edges (zero padding). ``(N + 1) (M + 1)`` stored values per row at most.

    Parameters
    ----------
    intensity : ndarray (N, M) or (P, N, M)
        Probe intensity normalised to sum 1, beam centre at pixel ``(N//2, M//2)``; a stack: the
        footprint of each position.
    positions_px : ndarray (P, 2)
        Beam centres as fractional object-pixel indices (y, x), inside the grid.
    shape : (ny, nx)
        Object grid shape.
    """
    import scipy.sparse as sp

    ny, nx = int(shape[0]), int(shape[1])
    kernels = np.asarray(intensity, dtype=float)
    pos = np.asarray(positions_px, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise InvalidInputError(f"positions must be (P, 2) fractional (y, x) indices, not shape {tuple(pos.shape)}")
    if kernels.ndim == 3 and kernels.shape[0] != len(pos):
        raise InvalidInputError(f"{kernels.shape[0]} per-position footprints for {len(pos)} positions")
    if kernels.ndim not in (2, 3):
        raise InvalidInputError(f"a footprint must be (N, M) or (P, N, M), not shape {tuple(kernels.shape)}")
    n, m = kernels.shape[-2:]
    if np.any((pos < 0) | (pos[:, :1] > ny - 1) | (pos[:, 1:] > nx - 1)):
        raise InvalidInputError(f"beam positions fall outside the object grid ({ny} x {nx} pixels)")
    i0 = np.clip(np.floor(pos).astype(int), 0, [ny - 2, nx - 2])
    w = pos - i0
    uu, vv = np.mgrid[0 : n + 1, 0 : m + 1]
    rows, cols, vals = [], [], []
    for j in range(len(pos)):
        kernel = kernels[j] if kernels.ndim == 3 else kernels
        wy, wx = w[j]
        k = np.zeros((n + 1, m + 1))
        k[:n, :m] += (1 - wy) * (1 - wx) * kernel
        k[:n, 1:] += (1 - wy) * wx * kernel
        k[1:, :m] += wy * (1 - wx) * kernel
        k[1:, 1:] += wy * wx * kernel
        ry = i0[j, 0] + uu - n // 2
        rx = i0[j, 1] + vv - m // 2
        keep = (ry >= 0) & (ry < ny) & (rx >= 0) & (rx < nx) & (k != 0)
        rows.append(np.full(int(keep.sum()), j))
        cols.append((ry * nx + rx)[keep])
        vals.append(k[keep])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(len(pos), ny * nx))


def poisson_deviance(b, m, xp=np) -> float:
    """Poisson deviance ``2 sum [b log(b/m) - (b - m)]`` (``b log b = 0`` at ``b = 0``)."""
    b = xp.asarray(b, dtype=float)
    m = xp.asarray(m, dtype=float)
    ratio = xp.where(b > 0, b / m, 1.0)
    return float(2.0 * xp.sum(xp.where(b > 0, b * xp.log(ratio), 0.0) - (b - m)))
