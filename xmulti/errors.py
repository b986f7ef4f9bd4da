"""Exceptions raised by xmulti.

Every error about bad input names the file, the path inside it and the problem, so a user
can act on one line.  The CLI prints ``str(error)`` and exits with code 2.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["XmultiError", "InvalidScanError", "InvalidInputError"]


class XmultiError(Exception):
    """Base class of all errors xmulti raises on purpose (the CLI turns them into exit code 2)."""


class InvalidInputError(XmultiError, ValueError):
    """An argument given to an xmulti function is not usable (unknown element, bad option...)."""


class InvalidScanError(XmultiError, ValueError):
    """A scan file (or in-memory scan) does not follow the combined-scan layout.

    Parameters
    ----------
    file : str or PathLike or None
        The file concerned, or None for an in-memory object.
    path : str
        The HDF5 path (group, dataset or ``dataset@attribute``) concerned; "/" for the file itself.
    problem : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, file: str | PathLike | None, path: str, problem: str) -> None:
        self.file = None if file is None else str(file)
        self.path = path
        self.problem = problem
        where = "<in-memory scan>" if file is None else self.file
        super().__init__(f"{where}: {path}: {problem}")
