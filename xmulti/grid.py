"""Scan and image grids in the stage frame (pure numpy).

Positions are where the beam centre hits the sample, (y, x) in um. A raster scan stores its
positions row by row (y slow, x fast) with ``scan_shape = (ny, nx)``.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

__all__ = ["raster_axes_um", "image_axes_um", "infer_scan_shape"]


def raster_axes_um(positions_um: np.ndarray, scan_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (um) of the rows and columns of a raster scan's map.

    The row coordinate is the mean y of each row, the column coordinate the mean x of each
    column, so jitter and fly-scan wobble average out and the map pixel centres sit where the
    beam was on average.

    Parameters
    ----------
    positions_um : ndarray (ny * nx, 2)
        Positions (y, x) in um, row by row.
    scan_shape : (ny, nx)

    Returns
    -------
    y_um : ndarray (ny,)
    x_um : ndarray (nx,)
    """
    ny, nx = (int(v) for v in scan_shape)
    positions = np.asarray(positions_um, dtype=float)
    if positions.shape != (ny * nx, 2):
        raise InvalidInputError(
            f"positions of shape {positions.shape} do not fill a raster of scan_shape {(ny, nx)}"
        )
    grid = positions.reshape(ny, nx, 2)
    return grid[:, :, 0].mean(axis=1), grid[:, :, 1].mean(axis=0)


def image_axes_um(shape: tuple[int, int], pixel_size_um: float, origin_um: tuple[float, float]):
    """Pixel-centre coordinates (um) of an image whose pixel (0, 0) is centred at ``origin_um``."""
    ny, nx = shape
    return (
        origin_um[0] + pixel_size_um * np.arange(ny),
        origin_um[1] + pixel_size_um * np.arange(nx),
    )


def infer_scan_shape(positions_um: np.ndarray, tolerance: float = 0.25) -> tuple[int, int] | None:
    """Guess ``(ny, nx)`` of a row-by-row raster from its positions, or None if irregular.

    Rows are recognised where y jumps by more than ``tolerance`` times the median x step.
    """
    positions = np.asarray(positions_um, dtype=float)
    n = positions.shape[0]
    if n < 2:
        return (1, n) if n else None
    dx = np.abs(np.diff(positions[:, 1]))
    step = np.median(dx[dx > 0]) if np.any(dx > 0) else 0.0
    if step == 0:
        return None
    new_row = np.abs(np.diff(positions[:, 0])) > tolerance * step
    ny = int(new_row.sum()) + 1
    if n % ny:
        return None
    return ny, n // ny
