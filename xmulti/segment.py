"""Cell segmentation of a phase image (pure numpy / scikit-image kernels).

The pipeline: denoise (Gaussian or total variation), threshold (Otsu, multi-Otsu or local),
refine the edge by hysteresis down to the background noise (a cell's edge is thin and its phase
tends to zero, so a threshold half-way to the cell would cut its rim off), fill holes, split
touching cells by a watershed on the distance transform seeded by its h-maxima, drop small
objects. Input is a "matter" signal that grows with mass (``-phase`` in xmulti's convention).

References: N. Otsu, IEEE Trans. SMC 9, 62 (1979); P.-S. Liao et al., J. Inf. Sci. Eng. 17, 713
(2001) (multi-Otsu); S. Beucher & F. Meyer, in *Mathematical Morphology in Image Processing*
(1993) (marker-controlled watershed); P. Soille, *Morphological Image Analysis* (2003) (h-maxima).
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError

__all__ = ["segment_cells", "jaccard_per_label", "remove_small_regions", "background_polynomial"]

_METHODS = ("otsu", "multiotsu", "local")


def remove_small_regions(labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """Labels with regions of fewer than ``min_pixels`` pixels set to 0, renumbered 1..K."""
    from skimage.segmentation import relabel_sequential

    counts = np.bincount(labels.ravel())
    small = counts < min_pixels
    small[0] = False
    out = np.where(small[labels], 0, labels)
    return relabel_sequential(out)[0].astype(np.int32)


def background_polynomial(image: np.ndarray, background: np.ndarray, order: int = 1) -> np.ndarray:
    """Least-squares 2-D polynomial of total degree ``order`` fitted to ``image[background]``,
    evaluated everywhere (0: constant, 1: plane, e.g. a ptychographic phase ramp or a tilted ice
    layer). Coordinates are scaled to [-1, 1] for conditioning."""
    ny, nx = image.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    terms = [yy**i * xx**j for i in range(order + 1) for j in range(order + 1 - i)]
    use = background & np.isfinite(image)
    if use.sum() < len(terms):
        raise InvalidInputError(
            f"{int(use.sum())} background pixels cannot fit a polynomial background of order {order}"
        )
    design = np.stack([t[use] for t in terms], axis=1)
    coef = np.linalg.lstsq(design, image[use], rcond=None)[0]
    return sum(c * t for c, t in zip(coef, terms, strict=True))


def _denoise(signal: np.ndarray, method: str | None, sigma_px: float) -> np.ndarray:
    if method in (None, "none") or sigma_px <= 0:
        return signal
    if method == "gaussian":
        from scipy import ndimage

        return ndimage.gaussian_filter(signal, sigma_px, mode="nearest")
    if method == "tv":
        from skimage.restoration import denoise_tv_chambolle

        spread = float(np.percentile(signal, 99) - np.percentile(signal, 1)) or 1.0
        # weight in units of the image's dynamic range: about one noise level of smoothing
        return denoise_tv_chambolle(signal / spread, weight=0.05 * sigma_px) * spread
    raise InvalidInputError(f"unknown denoising {method!r}; choose 'gaussian', 'tv' or None")


def _foreground(smooth: np.ndarray, method: str, classes: int, block_px: int, noise_k: float, low_fraction: float):
    """Boolean foreground and the (high) global threshold used."""
    from skimage import filters

    if method == "multiotsu":
        high = float(filters.threshold_multiotsu(smooth, classes=classes)[0])
    else:
        high = float(filters.threshold_otsu(smooth))
    below = smooth[smooth <= high]
    above = smooth[smooth > high]
    if below.size == 0 or above.size == 0:
        return smooth > high, high
    background = float(np.median(below))
    noise = 1.4826 * float(np.median(np.abs(below - background)))
    low = background + max(noise_k * noise, low_fraction * (float(np.median(above)) - background))
    low = min(low, high)
    if method == "local":
        # block-mean threshold for uneven backgrounds; the global low level keeps noise out
        local = filters.threshold_local(smooth, block_size=block_px, offset=0.0)
        return (smooth > local) & (smooth > low), high
    return filters.apply_hysteresis_threshold(smooth, low, high), high


def segment_cells(
    signal: np.ndarray,
    pixel_size_um: float,
    *,
    method: str = "otsu",
    classes: int = 3,
    denoise: str | None = "gaussian",
    denoise_sigma_um: float | None = None,
    block_size_um: float | None = None,
    split: bool = True,
    split_depth_um: float | None = None,
    min_area_um2: float | None = None,
    noise_k: float = 3.0,
    low_fraction: float = 0.2,
    flatten_order: int | None = 1,
) -> np.ndarray:
    """Label cells in a matter signal (grows with mass, e.g. ``-phase``).

    Parameters
    ----------
    signal : ndarray (H, W)
        Image; NaN pixels (outside a reconstruction) count as background.
    pixel_size_um : float
        Pixel size (um): every length and area option is in um so results do not depend on
        sampling.
    method : {"otsu", "multiotsu", "local"}
        Global Otsu threshold; the lowest of ``classes`` multi-Otsu thresholds (background vs
        everything, useful when nuclei make the histogram three-modal); or a local (block mean)
        threshold ANDed with the global Otsu side.
    classes : int
        Classes of multi-Otsu.
    denoise : {"gaussian", "tv", None}
        Denoising before thresholding.
    denoise_sigma_um : float, optional
        Gaussian sigma (default: 1 pixel); for "tv" it scales the weight.
    block_size_um : float, optional
        Local-threshold block (default: 1/4 of the smaller image side).
    split : bool
        Split touching cells by a watershed on the distance transform.
    split_depth_um : float, optional
        Minimum depth (um) of the distance-transform saddle between two cells for them to be
        split (h of the h-maxima; default max(2 pixels, 0.1 um)).
    min_area_um2 : float, optional
        Drop regions smaller than this (default: 25 pixels).
    noise_k, low_fraction : float
        The hysteresis low threshold is ``background + max(noise_k * noise,
        low_fraction * (foreground - background))`` (median levels, MAD noise).
    flatten_order : int or None
        After a first segmentation, a polynomial of this order is fitted to the background
        (pixels away from the first cells) and subtracted, then the image is thresholded again:
        this removes the linear phase ramp a ptychographic reconstruction is free to have and
        a tilted ice layer. None skips it.

    Returns
    -------
    ndarray (H, W) int32
        0 for background, 1..K for cells (K may be 0).
    """
    from scipy import ndimage
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    signal = np.asarray(signal, dtype=float)
    if signal.ndim != 2:
        raise InvalidInputError(f"segmentation needs a 2-D image, not shape {signal.shape}")
    if method not in _METHODS:
        raise InvalidInputError(f"unknown threshold method {method!r}; choose one of {', '.join(_METHODS)}")
    if not pixel_size_um > 0:
        raise InvalidInputError("pixel_size_um must be positive")
    finite = np.isfinite(signal)
    if finite.sum() < 4 or np.ptp(signal[finite]) == 0:
        raise InvalidInputError("the phase image is empty or constant: nothing to segment")
    work = np.where(finite, signal, np.median(signal[finite]))

    sigma_px = 1.0 if denoise_sigma_um is None else denoise_sigma_um / pixel_size_um
    smooth = _denoise(work, denoise, sigma_px)
    block = block_size_um / pixel_size_um if block_size_um else min(smooth.shape) / 4
    block_px = max(3, int(block) // 2 * 2 + 1)  # odd
    mask, _ = _foreground(smooth, method, classes, block_px, noise_k, low_fraction)
    if flatten_order is not None:
        away = ~ndimage.binary_dilation(mask, iterations=3) & finite
        if away.sum() > 0.05 * away.size:
            smooth = smooth - background_polynomial(smooth, away, flatten_order)
            mask, _ = _foreground(smooth, method, classes, block_px, noise_k, low_fraction)
    mask &= finite
    mask = ndimage.binary_fill_holes(mask)
    min_px = 25 if min_area_um2 is None else max(1, int(round(min_area_um2 / pixel_size_um**2)))
    components = remove_small_regions(ndimage.label(mask)[0], min_px)
    if components.max() == 0 or not split:
        return components

    distance = ndimage.distance_transform_edt(components > 0)
    depth_px = max(2.0, 0.1 / pixel_size_um) if split_depth_um is None else split_depth_um / pixel_size_um
    markers = ndimage.label(h_maxima(ndimage.gaussian_filter(distance, 0.5), depth_px))[0]
    labels = watershed(-distance, markers, mask=components > 0)
    # a component without a marker (flat distance) keeps its own label
    orphan = (components > 0) & (labels == 0)
    if orphan.any():
        labels[orphan] = components[orphan] + labels.max()
    return remove_small_regions(labels.astype(np.int32), min_px)


def jaccard_per_label(truth: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """For each truth region, the Jaccard index with the predicted region overlapping it most."""
    scores = {}
    for k in np.unique(truth):
        if k == 0:
            continue
        t = truth == k
        hit = labels[t]
        hit = hit[hit > 0]
        if hit.size == 0:
            scores[int(k)] = 0.0
            continue
        best = labels == np.bincount(hit).argmax()
        scores[int(k)] = float((t & best).sum() / (t | best).sum())
    return scores
