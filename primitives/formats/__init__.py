"""Sparse tensor formats and their level types (one module per level type).

* :mod:`.level`: the :class:`Level` protocol every level type implements, and the
  registry (:func:`register_level`) that makes a new level type usable everywhere;
* :mod:`.dense`, :mod:`.compressed`, :mod:`.singleton`: the built-in level types;
* :mod:`.exprs`: level expressions of the dimension-to-level map (``Dim``, ``FloorDiv``,
  ``Mod``);
* :mod:`.format`: :class:`Format`, the named and blocked formats (:func:`BSR`,
  :func:`blocked`) and :func:`resolve_format`.
"""
from .compressed import Compressed as Compressed
from .compressed import compressed as compressed
from .dense import Dense as Dense
from .dense import dense as dense
from .exprs import Dim as Dim
from .exprs import FloorDiv as FloorDiv
from .exprs import LevelExpr as LevelExpr
from .exprs import Mod as Mod
from .format import BSR as BSR
from .format import COMPRESSED as COMPRESSED
from .format import COO as COO
from .format import CSC as CSC
from .format import CSF as CSF
from .format import CSR as CSR
from .format import DCSR as DCSR
from .format import DENSE as DENSE
from .format import FORMAT_NAMES as FORMAT_NAMES
from .format import SINGLETON as SINGLETON
from .format import Format as Format
from .format import FormatLike as FormatLike
from .format import blocked as blocked
from .format import resolve_format as resolve_format
from .level import Level as Level
from .level import check_coordinates as check_coordinates
from .level import check_segments as check_segments
from .level import level_type as level_type
from .level import level_types as level_types
from .level import register_level as register_level
from .singleton import Singleton as Singleton
from .singleton import singleton as singleton

LevelType = Level

__all__ = ["BSR", "COMPRESSED", "COO", "CSC", "CSF", "CSR", "Compressed", "DCSR", "DENSE",
           "Dense", "Dim", "FORMAT_NAMES", "FloorDiv", "Format", "FormatLike", "Level",
           "LevelExpr", "LevelType", "Mod", "SINGLETON", "Singleton", "blocked",
           "check_coordinates", "check_segments", "compressed", "dense", "level_type",
           "level_types", "register_level", "resolve_format", "singleton"]

from .format import _rebuild_format  # noqa: E402,F401  (unpickles Formats pickled before the split)
