"""The figures of a results store: overlays of elements on the phase and the per-cell table.

Shared by ``xmulti run --figures DIR`` and ``xmulti demo``. Each file is written to a temporary
name and renamed into place, so a figure either exists whole or not at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import InvalidInputError

__all__ = ["DEFAULT_OVERLAYS", "write_figures"]

#: Element sets drawn by default (those present in the maps): trace metals, then the elements
#: that follow the cell mass.
DEFAULT_OVERLAYS: tuple[tuple[str, ...], ...] = (("Fe", "Zn"), ("P", "S", "K"))


def _atomic(path: Path, write) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_figures(
    store: str | os.PathLike,
    out_dir: str | os.PathLike,
    overlays: Sequence[Sequence[str]] | None = None,
    illumination_threshold: float = 0.05,
    max_pixels: int = 1 << 20,
) -> dict[str, Path]:
    """Overlay PNGs (elements over the phase, RGB composite) and ``regions.csv`` of a store.

    Parameters
    ----------
    store : path-like
        Results store with ``/xrf/elemental_maps`` and ``/reconstructed`` (and optionally
        ``/correlation/regions``).
    out_dir : path-like
        Directory for the files (created if absent).
    overlays : sequence of element sets, optional
        Up to three elements each; default :data:`DEFAULT_OVERLAYS`, keeping the elements
        present in the maps.
    illumination_threshold : float
        Phase pixels that saw less than this fraction of the peak illumination are blank.
    max_pixels : int
        A larger phase is shown block-averaged to at most this many pixels (read chunk by
        chunk, :mod:`xmulti.working_grid`): more than a figure shows, and memory stays bounded.

    Returns
    -------
    dict of str to Path
        What was written, by name (``overlay_Fe_Zn.png``, ``regions.csv``).
    """
    import matplotlib.pyplot as plt

    from .io.results import read_group
    from .stages import load_working_images, mask_unilluminated
    from .viz import overlay_figure, save_figure

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    phase, maps, recon, _, _ = load_working_images(store, max_pixels)
    phase = mask_unilluminated(phase, recon, illumination_threshold)
    written: dict[str, Path] = {}
    for elements in overlays or DEFAULT_OVERLAYS:
        present = [e for e in elements if e in maps.data_vars]
        if not present:
            continue
        if len(present) > 3:
            raise InvalidInputError(f"an overlay shows at most three elements, got {', '.join(present)}")
        name = f"overlay_{'_'.join(present)}.png"
        fig = overlay_figure(phase, maps, present)
        written[name] = _atomic(out / name, lambda p, fig=fig: save_figure(fig, p))
        plt.close(fig)
    try:
        regions = read_group(store, "/correlation/regions").load()
    except InvalidInputError:
        regions = None
    if regions is not None:
        frame = regions.to_dataframe()
        written["regions.csv"] = _atomic(out / "regions.csv",
                                         lambda p: frame.to_csv(p, float_format="%.6g"))
    return written
