"""The base class of every error mdpalign raises on purpose.

``except MdpalignError`` catches any of the library's own errors in one clause; the specific classes
(``InvalidMDPError``, ``SolverError``, ``ShapeError``, ...) keep their meaning and also keep the
built-in base a caller would expect (``ValueError`` for bad input, ``RuntimeError`` for a solver
that ran out of iterations), so existing ``except ValueError`` code keeps working.

The command line answers an ``MdpalignError`` raised by a user's input with one line and exit
status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["MdpalignError"]


class MdpalignError(Exception):
    """Base of the library's errors; the message names the problem and where it is."""
