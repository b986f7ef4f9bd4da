"""Pure-Python reader of EPICS ``saveData`` files (MDA, XDR-encoded), as written at APS beamlines.

An MDA file holds an N-dimensional step scan (e.g. Sample Y outer, Sample X inner, and for step
scans at 2-ID-E a third dimension: the MCA spectrum of each point), plus "extra PVs" recorded
once per scan (MCA energy calibration, scaler names, amplifier sensitivities, ...).

The file is XDR (RFC 4506): big-endian, every item padded to 4 bytes, shorts stored as 4-byte
ints. Layout (saveData, file version 1.3)::

    header : float version, int scan_number, int rank, int dimensions[rank],
             int is_regular, int offset_of_extra_pvs
    scan   : int rank, int npts, int current_point,
             [int offsets_of_lower_scans[npts]   if rank > 1],
             cstr name, cstr time, int n_positioners, int n_detectors, int n_triggers,
             positioners: int number, cstr name, desc, step_mode, unit,
                          readback_name, readback_desc, readback_unit
             detectors:   int number, cstr name, desc, unit
             triggers:    int number, cstr name, float command
             double positioner_data[n_positioners][npts]
             float  detector_data[n_detectors][npts]
             lower scans (at the offsets above)
    extra  : int n_pvs, then per PV: cstr name, cstr desc, int dbr_type,
             [int count, cstr unit   if dbr_type != DBR_STRING], values

where ``cstr`` is a "counted string": an int length, and when it is nonzero an XDR string
(int length again, bytes, padding). The decoding here uses :mod:`struct` and numpy (the
standard ``xdrlib`` module was removed in Python 3.13).

Reference: EPICS synApps ``sscan`` module documentation, "saveData: MDA file format".
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidScanError

__all__ = [
    "MDAPositioner",
    "MDADetector",
    "MDATrigger",
    "MDAScan",
    "ExtraPV",
    "MDAFile",
    "MDADimension",
    "read_mda",
    "SUPPORTED_VERSIONS",
]

#: saveData file versions whose layout this reader implements.
SUPPORTED_VERSIONS = (1.3,)

# EPICS channel-access DBR types used for extra PVs.
_DBR_STRING = 0
_DBR_CTRL_SHORT = 29
_DBR_CTRL_FLOAT = 30
_DBR_CTRL_ENUM = 31
_DBR_CTRL_CHAR = 32
_DBR_CTRL_LONG = 33
_DBR_CTRL_DOUBLE = 34
_NUMERIC_DBR = {
    _DBR_CTRL_SHORT: ">i4",  # XDR widens shorts to 4 bytes
    _DBR_CTRL_ENUM: ">i4",
    _DBR_CTRL_LONG: ">i4",
    _DBR_CTRL_FLOAT: ">f4",
    _DBR_CTRL_DOUBLE: ">f8",
}


@dataclass
class MDAPositioner:
    """A scan positioner (a motor, usually): its PVs, units and the positions it took."""

    number: int
    name: str
    description: str
    step_mode: str
    unit: str
    readback_name: str
    readback_description: str
    readback_unit: str
    data: np.ndarray  # (npts,) float64, in ``unit``


@dataclass
class MDADetector:
    """A detector (scaler channel, MCA channel, calc...) read at each point of a scan."""

    number: int
    name: str
    description: str
    unit: str
    data: np.ndarray  # (npts,) float32


@dataclass
class MDATrigger:
    """A trigger PV written at each point (e.g. the scaler's count command)."""

    number: int
    name: str
    command: float


@dataclass
class MDAScan:
    """One scan record of the file; ``sub_scans[i]`` is the inner scan run at point ``i``."""

    rank: int
    npts: int
    current_point: int
    name: str
    time: str
    positioners: list[MDAPositioner]
    detectors: list[MDADetector]
    triggers: list[MDATrigger]
    sub_scans: list[MDAScan | None] = field(default_factory=list)


@dataclass
class ExtraPV:
    """A PV recorded once per scan: ``value`` is a str, or an ndarray of ``count`` numbers."""

    name: str
    description: str
    dbr_type: int
    unit: str
    value: str | np.ndarray

    @property
    def scalar(self) -> str | float:
        """The value as a Python scalar: the string, or the first number."""
        if isinstance(self.value, str):
            return self.value
        return float(self.value.ravel()[0])


@dataclass
class MDADimension:
    """All scans of one nesting level stacked into regular arrays.

    For level ``k`` (0 = outermost) of a file with ``dimensions = (n0, n1, ...)``, each array
    has shape ``dimensions[: k + 1]``; points never recorded (aborted scans) are NaN.

    Attributes
    ----------
    level : int
        Nesting level, 0 = outermost.
    scan_name : str
        The scan record (e.g. ``2xfm:scan1``).
    positioners, detectors : dict of str to ndarray
        Arrays keyed by PV name.
    positioner_info, detector_info : dict
        The :class:`MDAPositioner` / :class:`MDADetector` of the first scan at this level (names,
        descriptions, units).
    """

    level: int
    scan_name: str
    positioners: dict[str, np.ndarray]
    detectors: dict[str, np.ndarray]
    positioner_info: dict[str, MDAPositioner]
    detector_info: dict[str, MDADetector]


@dataclass
class MDAFile:
    """A decoded MDA file.

    Attributes
    ----------
    path : Path
        The file read.
    version : float
        saveData file version (1.3).
    scan_number : int
        The scan number recorded by saveData.
    dimensions : tuple of int
        Requested points per dimension, outermost first (e.g. ``(ny, nx)`` or ``(ny, nx, nch)``).
    is_regular : bool
        Whether all inner scans have the same size.
    scan : MDAScan
        The outermost scan, with its sub-scans.
    extra_pvs : dict of str to ExtraPV
        Extra PVs keyed by PV name, in file order.
    """

    path: Path
    version: float
    scan_number: int
    dimensions: tuple[int, ...]
    is_regular: bool
    scan: MDAScan
    extra_pvs: dict[str, ExtraPV]

    @property
    def rank(self) -> int:
        """Number of scan dimensions."""
        return len(self.dimensions)

    def extra(self, name: str, default: object = None) -> str | float | object:
        """Scalar value of extra PV ``name`` (see :attr:`ExtraPV.scalar`), or ``default``."""
        pv = self.extra_pvs.get(name)
        return default if pv is None else pv.scalar

    def dimension(self, level: int) -> MDADimension:
        """Stack the scans of nesting ``level`` into arrays of shape ``dimensions[:level+1]``.

        Parameters
        ----------
        level : int
            0 for the outermost scan, ``rank - 1`` for the innermost.
        """
        if not 0 <= level < self.rank:
            raise InvalidScanError(
                self.path, "/", f"no scan level {level}: the file has rank {self.rank}"
            )
        scans: list[tuple[tuple[int, ...], MDAScan]] = [((), self.scan)]
        for _ in range(level):
            scans = [
                ((*index, i), sub)
                for index, scan in scans
                for i, sub in enumerate(scan.sub_scans)
                if sub is not None
            ]
        shape = self.dimensions[: level + 1]
        first = scans[0][1] if scans else None
        positioners: dict[str, np.ndarray] = {}
        detectors: dict[str, np.ndarray] = {}
        pos_info: dict[str, MDAPositioner] = {}
        det_info: dict[str, MDADetector] = {}
        for index, scan in scans:
            n = min(scan.current_point, shape[-1])
            for p in scan.positioners:
                out = positioners.setdefault(p.name, np.full(shape, np.nan, dtype=np.float64))
                out[(*index, slice(0, n))] = p.data[:n]
                pos_info.setdefault(p.name, p)
            for d in scan.detectors:
                out = detectors.setdefault(d.name, np.full(shape, np.nan, dtype=np.float32))
                out[(*index, slice(0, n))] = d.data[:n]
                det_info.setdefault(d.name, d)
        return MDADimension(
            level=level,
            scan_name="" if first is None else first.name,
            positioners=positioners,
            detectors=detectors,
            positioner_info=pos_info,
            detector_info=det_info,
        )


class _XDR:
    """Minimal XDR decoder over a bytes buffer; truncation raises InvalidScanError."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def _need(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or self.pos + nbytes > len(self.data):
            raise InvalidScanError(
                self.path,
                "/",
                f"truncated MDA file: {what} needs {nbytes} bytes at offset {self.pos}, "
                f"file has {len(self.data)} bytes",
            )

    def int(self, what: str = "an integer") -> int:
        self._need(4, what)
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def float(self, what: str = "a float") -> float:
        self._need(4, what)
        (value,) = struct.unpack_from(">f", self.data, self.pos)
        self.pos += 4
        return value

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        padded = (count * itemsize + 3) // 4 * 4
        self._need(padded, what)
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += padded
        return out.astype(out.dtype.newbyteorder("="))  # native order, owns its memory

    def opaque(self, count: int, what: str) -> bytes:
        padded = (count + 3) // 4 * 4
        self._need(padded, what)
        out = self.data[self.pos : self.pos + count]
        self.pos += padded
        return out

    def string(self, what: str = "a string") -> str:
        length = self.int(what)
        return self.opaque(length, what).decode("latin-1")

    def counted_string(self, what: str = "a string") -> str:
        if self.int(what) == 0:
            return ""
        return self.string(what)


def read_mda(path: str | os.PathLike) -> MDAFile:
    """Read an EPICS saveData (MDA) file.

    Parameters
    ----------
    path : path-like
        The ``.mda`` file.

    Returns
    -------
    MDAFile
        Header, nested scans (positioner data in their own units, e.g. mm), and extra PVs.

    Raises
    ------
    InvalidScanError
        The file is missing, truncated, of an unsupported saveData version, or inconsistent.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidScanError(path, "/", f"cannot read MDA file: {exc.strerror or exc}") from None
    xdr = _XDR(data, path)
    version = round(xdr.float("the version number"), 4)
    if not any(abs(version - v) < 1e-3 for v in SUPPORTED_VERSIONS):
        raise InvalidScanError(
            path,
            "/",
            f"unsupported MDA (saveData) version {version:g}; this reader handles "
            f"{', '.join(f'{v:g}' for v in SUPPORTED_VERSIONS)}",
        )
    scan_number = xdr.int("the scan number")
    rank = xdr.int("the rank")
    if not 1 <= rank <= 8:
        raise InvalidScanError(path, "/", f"implausible MDA rank {rank} (file corrupt?)")
    dimensions = tuple(int(v) for v in xdr.array(">i4", rank, "the dimensions"))
    if any(d < 0 for d in dimensions):
        raise InvalidScanError(path, "/", f"negative MDA dimensions {dimensions} (file corrupt?)")
    is_regular = bool(xdr.int("the is-regular flag"))
    extra_offset = xdr.int("the extra-PV offset")
    scan = _read_scan(xdr, rank)
    extra_pvs: dict[str, ExtraPV] = {}
    if extra_offset > 0:
        xdr.pos = extra_offset
        extra_pvs = _read_extra_pvs(xdr)
    return MDAFile(
        path=path,
        version=version,
        scan_number=scan_number,
        dimensions=dimensions,
        is_regular=is_regular,
        scan=scan,
        extra_pvs=extra_pvs,
    )


def _read_scan(xdr: _XDR, expected_rank: int) -> MDAScan:
    start = xdr.pos
    rank = xdr.int("a scan's rank")
    if rank != expected_rank:
        raise InvalidScanError(
            xdr.path,
            "/",
            f"scan at offset {start} has rank {rank}, expected {expected_rank} (file corrupt?)",
        )
    npts = xdr.int("a scan's number of points")
    current_point = xdr.int("a scan's current point")
    if npts < 0 or not 0 <= current_point <= npts:
        raise InvalidScanError(
            xdr.path,
            "/",
            f"scan at offset {start}: {current_point} of {npts} points (file corrupt?)",
        )
    offsets = xdr.array(">i4", npts, "the offsets of inner scans") if rank > 1 else None
    name = xdr.counted_string("a scan name")
    time = xdr.counted_string("a scan time stamp")
    n_pos = xdr.int("the number of positioners")
    n_det = xdr.int("the number of detectors")
    n_trig = xdr.int("the number of triggers")
    if min(n_pos, n_det, n_trig) < 0 or max(n_pos, n_det, n_trig) > 100_000:
        raise InvalidScanError(
            xdr.path, "/", f"scan {name!r}: implausible positioner/detector counts"
        )
    pos_meta = []
    for _ in range(n_pos):
        number = xdr.int("a positioner number")
        texts = [xdr.counted_string("a positioner description") for _ in range(7)]
        pos_meta.append((number, texts))
    det_meta = []
    for _ in range(n_det):
        number = xdr.int("a detector number")
        texts = [xdr.counted_string("a detector description") for _ in range(3)]
        det_meta.append((number, texts))
    triggers = []
    for _ in range(n_trig):
        number = xdr.int("a trigger number")
        trig_name = xdr.counted_string("a trigger name")
        triggers.append(MDATrigger(number, trig_name, xdr.float("a trigger command")))
    positioners = [
        MDAPositioner(number, *texts, data=xdr.array(">f8", npts, f"positioner {texts[0]} data"))
        for number, texts in pos_meta
    ]
    detectors = [
        MDADetector(number, *texts, data=xdr.array(">f4", npts, f"detector {texts[0]} data"))
        for number, texts in det_meta
    ]
    sub_scans: list[MDAScan | None] = []
    if offsets is not None:
        for offset in offsets:
            if offset <= 0:  # inner scan never written (scan aborted)
                sub_scans.append(None)
                continue
            if offset >= len(xdr.data):
                raise InvalidScanError(
                    xdr.path,
                    "/",
                    f"truncated MDA file: inner scan at offset {offset} is past the end "
                    f"({len(xdr.data)} bytes)",
                )
            xdr.pos = int(offset)
            sub_scans.append(_read_scan(xdr, rank - 1))
    return MDAScan(
        rank, npts, current_point, name, time, positioners, detectors, triggers, sub_scans
    )


def _read_extra_pvs(xdr: _XDR) -> dict[str, ExtraPV]:
    count = xdr.int("the number of extra PVs")
    pvs: dict[str, ExtraPV] = {}
    for _ in range(count):
        name = xdr.counted_string("an extra PV name")
        description = xdr.counted_string("an extra PV description")
        dbr_type = xdr.int(f"the type of extra PV {name}")
        if dbr_type == _DBR_STRING:
            pvs[name] = ExtraPV(
                name, description, dbr_type, "", xdr.counted_string(f"extra PV {name}")
            )
            continue
        n = xdr.int(f"the count of extra PV {name}")
        unit = xdr.counted_string(f"the unit of extra PV {name}")
        if dbr_type == _DBR_CTRL_CHAR:
            # character arrays are stored as fixed-length opaque data; keep up to the first NUL
            raw = xdr.opaque(n, f"extra PV {name}")
            value: str | np.ndarray = raw.split(b"\0", 1)[0].decode("latin-1")
        elif dbr_type in _NUMERIC_DBR:
            value = xdr.array(_NUMERIC_DBR[dbr_type], n, f"extra PV {name}")
        else:
            raise InvalidScanError(
                xdr.path,
                "/",
                f"extra PV {name!r} has unknown EPICS DBR type {dbr_type} (file corrupt?)",
            )
        pvs[name] = ExtraPV(name, description, dbr_type, unit, value)
    return pvs
