"""Tests of primitives/formats/: level types and their registry, Format construction and
validation, the dimension-to-level map, names."""
import copy
import dataclasses
import pickle

import pytest

import jscorch as js
from jscorch.primitives import SparseFormatError
from jscorch.primitives.formats import (FORMAT_NAMES, Compressed, Dense, Dim, Level, Singleton,
                                       level_type, level_types, register_level,
                                       resolve_format)

import util


# -- levels ------------------------------------------------------------------------------
def test_level_properties_and_buffers():
  assert (js.dense.kind, js.compressed.kind, js.singleton.kind) == (
      "dense", "compressed", "singleton")
  assert js.compressed.ordered and js.compressed.unique
  assert (js.dense.has_pos, js.dense.has_crd) == (False, False)
  assert (js.compressed.has_pos, js.compressed.has_crd) == (True, True)
  assert (js.singleton.has_pos, js.singleton.has_crd) == (False, True)


def test_level_call_changes_properties_only():
  lvl = js.compressed(unique=False)
  assert lvl == Level("compressed", ordered=True, unique=False)
  assert lvl(ordered=False) == Level("compressed", ordered=False, unique=False)
  assert js.compressed == Level("compressed")       # the original is untouched
  assert hash(js.compressed(unique=False)) == hash(Level("compressed", True, False))


@pytest.mark.parametrize("lvl, text", [
    (js.dense, "dense"),
    (js.compressed, "compressed"),
    (js.compressed(unique=False), "compressed(nonunique)"),
    (js.compressed(ordered=False), "compressed(unordered)"),
    (js.singleton(ordered=False, unique=False), "singleton(unordered, nonunique)"),
], ids=["dense", "compressed", "nonunique", "unordered", "singleton_both"])
def test_level_repr(lvl, text):
  assert repr(lvl) == text


def test_level_unknown_kind():
  with pytest.raises(SparseFormatError, match=r"unknown level type; got kind='sparse'"):
    Level("sparse")


@pytest.mark.parametrize("kw", [dict(unique=False), dict(ordered=False)],
                         ids=["nonunique", "unordered"])
def test_dense_level_must_be_ordered_unique(kw):
  with pytest.raises(SparseFormatError, match=r"a dense level is always ordered and unique"):
    js.dense(**kw)


def test_level_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    js.compressed.unique = False


def test_level_types_are_registered_classes():
  assert {"dense", "compressed", "singleton"} <= set(level_types())
  assert (level_type("dense"), level_type("compressed"), level_type("singleton")) == (
      Dense, Compressed, Singleton)
  assert type(js.compressed(unique=False)) is Compressed
  assert type(Level("singleton", unique=False)) is Singleton
  assert Level(kind="compressed", ordered=False) == js.compressed(ordered=False)
  assert isinstance(js.dense, Level) and js.dense.kind == js.dense.name == "dense"
  assert js.compressed != js.singleton and js.dense != js.compressed(unique=True)


@pytest.mark.parametrize("lvl, buffers, full, branchless, has_locate", [
    (js.dense, (), True, False, True),
    (js.compressed, ("pos", "crd"), False, False, False),
    (js.singleton, ("crd",), False, True, False),
], ids=["dense", "compressed", "singleton"])
def test_level_capabilities(lvl, buffers, full, branchless, has_locate):
  assert (lvl.buffers, lvl.full, lvl.branchless, lvl.has_locate) == (
      buffers, full, branchless, has_locate)


@pytest.mark.parametrize("lvl, args, expected", [
    (js.dense, (3, 4, 7, False), 12), (js.dense, (3, 4, 7, True), 12),
    (js.compressed, (1, 5, 7, False), 5), (js.compressed, (3, 4, 7, False), 7),
    (js.compressed, (3, 4, 2, True), 2), (js.compressed(unique=False), (1, 5, 7, False), 7),
    (js.singleton, (3, 4, 7, False), 3), (js.singleton, (3, 4, 7, True), 7),
], ids=["dense", "dense_last", "compressed_by_size", "compressed_by_nse", "compressed_last",
        "compressed_nonunique", "singleton", "singleton_last"])
def test_level_capacity(lvl, args, expected):
  parent_cap, size, nse, last = args
  assert lvl.capacity(parent_cap=parent_cap, size=size, nse=nse, last=last) == expected
  assert lvl.fixed_capacity(parent_cap, size) == (parent_cap * size if lvl.full else None)


def test_levels_pickle_and_copy():
  for lvl in (js.dense, js.compressed(ordered=False), js.singleton(unique=False)):
    assert pickle.loads(pickle.dumps(lvl)) == lvl and copy.deepcopy(lvl) == lvl
    assert type(pickle.loads(pickle.dumps(lvl))) is type(lvl)


def test_register_level_errors():
  with pytest.raises(SparseFormatError, match=r"register_level: expected a subclass of Level "
                     r"with a name; got <class 'int'>"):
    register_level(int)

  class Impostor(Compressed):
    name = "compressed"

  with pytest.raises(SparseFormatError, match=r"register_level: the level name 'compressed' is "
                     r"taken by Compressed; got .*Impostor. Choose another name"):
    register_level(Impostor)
  assert level_type("compressed") is Compressed


def test_dim_to_lvl_map():
  assert js.CSR.dim_to_lvl == (Dim(0), Dim(1)) and js.CSC.dim_to_lvl == (Dim(1), Dim(0))
  csc = js.Format(js.dense, js.compressed, dim_to_lvl=(Dim(1), Dim(0)))
  assert csc == js.CSC and csc.mode_ordering == (1, 0)
  assert js.Format(js.dense, js.compressed, mode_ordering=(1, 0),
                   dim_to_lvl=(Dim(1), Dim(0))) == js.CSC
  assert util.DENSE_DCSR3.dim_to_lvl == tuple(Dim(d) for d in util.DENSE_DCSR3.mode_ordering)


@pytest.mark.parametrize("kw, match", [
    (dict(dim_to_lvl=(1, 0)), r"Format: dim_to_lvl entries must be level expressions; got "
     r"dim_to_lvl=\(1, 0\), expected Dim\(d\) for each level"),
    (dict(dim_to_lvl=(Dim(1), Dim(0)), mode_ordering=(0, 1)),
     r"Format: dim_to_lvl and mode_ordering disagree; got dim_to_lvl=\(Dim\(1\), Dim\(0\)\), "
     r"mode_ordering=\(0, 1\)"),
    (dict(dim_to_lvl=(Dim(0), Dim(0))), r"mode_ordering must be a permutation of range\(2\)"),
], ids=["not_expressions", "disagree", "not_permutation"])
def test_dim_to_lvl_errors(kw, match):
  with pytest.raises(SparseFormatError, match=match):
    js.Format(js.dense, js.compressed, **kw)


# -- Format: construction, repr, value semantics -------------------------------------------
@pytest.mark.parametrize("fmt, text", [
    (js.CSR, "Format(dense, compressed)"),
    (js.CSC, "Format(dense, compressed, mode_ordering=(1, 0))"),
    (js.COO, "Format(compressed(nonunique), singleton)"),
    (js.DCSR, "Format(compressed, compressed)"),
    (js.CSF, "Format(compressed, compressed, compressed)"),
    (js.CSR.replace(n_batch=1, n_dense=2), "Format(dense, compressed, n_batch=1, n_dense=2)"),
    (util.UNORDERED_COO,
     "Format(compressed(unordered, nonunique), singleton(unordered, nonunique))"),
    (util.DENSE_DCSR3, "Format(dense, compressed, compressed, mode_ordering=(2, 0, 1))"),
], ids=["csr", "csc", "coo", "dcsr", "csf", "csr_batch_block", "unordered_coo", "dense_dcsr3"])
def test_format_repr(fmt, text):
  assert repr(fmt) == text


def test_named_formats_structure():
  assert js.CSR.levels == (js.dense, js.compressed) and js.CSR.mode_ordering == (0, 1)
  assert js.CSC.levels == js.CSR.levels and js.CSC.mode_ordering == (1, 0)
  assert js.COO.levels == (js.compressed(unique=False), js.singleton)
  assert js.DCSR.levels == (js.compressed, js.compressed)
  assert js.CSF.levels == (js.compressed,) * 3
  assert FORMAT_NAMES == ("coo", "csr", "csc", "dcsr", "csf")


@pytest.mark.parametrize("fmt, name", [
    (js.CSR, "csr"), (js.CSC, "csc"), (js.COO, "coo"), (js.DCSR, "dcsr"), (js.CSF, "csf"),
    (util.COO3, "coo"), (js.CSR.replace(n_batch=2, n_dense=1), "csr"),
    (util.DCSC, None), (util.UNORDERED_COO, None), (util.DENSE_DCSR3, None),
], ids=["csr", "csc", "coo", "dcsr", "csf", "coo3", "csr_batch_block", "dcsc",
        "unordered_coo", "dense_dcsr3"])
def test_format_name(fmt, name):
  assert fmt.name == name


def test_format_equality_and_hash():
  csc = js.Format(js.dense, js.compressed, mode_ordering=(1, 0))
  assert csc == js.CSC and hash(csc) == hash(js.CSC)
  assert js.Format(js.dense, js.compressed) == js.CSR
  assert js.CSR != js.CSC
  assert js.CSR != js.CSR.replace(n_batch=1)
  assert js.CSR != js.CSR.replace(n_dense=1)
  assert js.DCSR != js.Format(js.compressed(ordered=False), js.compressed)
  assert js.CSR != "csr" and js.CSR != (js.dense, js.compressed)
  assert len({js.CSR, csc, js.CSC, js.Format(js.dense, js.compressed), js.COO}) == 3
  assert {js.CSR: 1}[js.Format(js.dense, js.compressed)] == 1


def test_format_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError, match="Format is immutable"):
    js.CSR.n_batch = 1
  with pytest.raises(dataclasses.FrozenInstanceError, match="cannot set levels"):
    js.CSR.levels = ()
  assert js.CSR.n_batch == 0 and js.CSR.levels == (js.dense, js.compressed)


def test_format_pickle_and_copy():
  fmt = js.Format(js.compressed(unique=False), js.singleton, mode_ordering=(1, 0), n_batch=1,
                  n_dense=2)
  assert pickle.loads(pickle.dumps(fmt)) == fmt
  assert copy.deepcopy(fmt) == fmt and copy.copy(fmt) == fmt


def test_format_replace():
  fmt = js.CSR.replace(n_batch=2, n_dense=1)
  assert (fmt.n_batch, fmt.n_dense, fmt.levels) == (2, 1, js.CSR.levels)
  assert js.CSR.replace(mode_ordering=(1, 0)) == js.CSC
  assert js.CSR.replace(levels=(js.compressed, js.compressed)) == js.DCSR
  with pytest.raises(SparseFormatError, match="mode_ordering must be a permutation"):
    js.CSR.replace(mode_ordering=(0, 0))


@pytest.mark.parametrize("fmt, expect", [
    (js.CSR, dict(n_sparse=2, ndim=2, levels_of_dims=(0, 1), ordered=True, unique=True,
                  n_dense_levels=1)),
    (js.CSC.replace(n_batch=1, n_dense=2),
     dict(n_sparse=2, ndim=5, levels_of_dims=(1, 0), ordered=True, unique=True,
          n_dense_levels=1)),
    (js.COO, dict(n_sparse=2, ndim=2, levels_of_dims=(0, 1), ordered=True, unique=True,
                  n_dense_levels=0)),
    (util.UNORDERED_COO, dict(n_sparse=2, ndim=2, levels_of_dims=(0, 1), ordered=False,
                              unique=False, n_dense_levels=0)),
    (util.DENSE_DCSR3, dict(n_sparse=3, ndim=3, levels_of_dims=(1, 2, 0), ordered=True,
                            unique=True, n_dense_levels=1)),
    (js.Format(js.dense, js.dense), dict(n_sparse=2, ndim=2, levels_of_dims=(0, 1),
                                         ordered=True, unique=True, n_dense_levels=2)),
], ids=["csr", "csc_batch_block", "coo", "unordered_coo", "dense_dcsr3", "all_dense"])
def test_format_derived_properties(fmt, expect):
  got = {k: getattr(fmt, k) for k in expect}
  assert got == expect
  assert fmt.dims_of_levels == fmt.mode_ordering


# -- Format: validation --------------------------------------------------------------------
@pytest.mark.parametrize("build, match", [
    (lambda: js.Format(js.compressed, js.singleton),
     r"singleton level 1 needs a non-unique compressed or singleton parent"),
    (lambda: js.Format(js.singleton),
     r"singleton level 0 needs a non-unique compressed or singleton parent"),
    (lambda: js.Format(js.dense, js.singleton),
     r"singleton level 1 needs a non-unique compressed or singleton parent"),
    (lambda: js.Format(js.compressed, js.dense, js.compressed),
     r"level 1 is dense but lies between sparse levels.*Use a compressed level there"),
    (lambda: js.Format(js.compressed, js.dense, mode_ordering=(1, 0)),
     r"dense levels below the last sparse level must store the last sparse dimensions in "
     r"order; got mode_ordering=\(1, 0\)"),
    (lambda: js.Format(js.compressed(unique=False), js.compressed),
     r"level 1 follows a non-unique level and must be a singleton"),
    (lambda: js.Format(js.dense, js.compressed, mode_ordering=(0, 0)),
     r"mode_ordering must be a permutation of range\(2\); got mode_ordering=\(0, 0\)"),
    (lambda: js.Format(js.dense, js.compressed, mode_ordering=(0, 1, 2)),
     r"mode_ordering must be a permutation of range\(2\); got mode_ordering=\(0, 1, 2\)"),
    (lambda: js.Format(js.dense, js.compressed, mode_ordering=(1, 2)),
     r"mode_ordering must be a permutation"),
    (lambda: js.Format("dense", "compressed"),
     r"levels must be Level objects .*got \('dense', 'compressed'\)"),
    (lambda: js.Format(js.dense, js.compressed, n_batch=-1),
     r"n_batch and n_dense must be >= 0; got n_batch=-1, n_dense=0"),
    (lambda: js.Format(js.dense, js.compressed, n_dense=-2),
     r"n_batch and n_dense must be >= 0; got n_batch=0, n_dense=-2"),
], ids=["singleton_unique_parent", "singleton_first", "singleton_dense_parent",
        "dense_between_sparse", "dense_below_transposed", "nonunique_then_compressed", "mode_ordering_repeat",
        "mode_ordering_length", "mode_ordering_range", "level_strings", "negative_batch",
        "negative_dense"])
def test_format_validation_errors(build, match):
  with pytest.raises(SparseFormatError, match=match):
    build()


def test_valid_custom_formats():
  # A chain of non-unique levels ending in a unique singleton (3-D COO), unordered COO.
  fmt = js.Format(js.compressed(unique=False), js.singleton(unique=False), js.singleton)
  assert fmt.unique and fmt.ordered and fmt.name == "coo"
  fmt = js.Format(js.compressed(unique=False))            # 1-D multiset
  assert not fmt.unique and fmt.n_sparse == 1
  fmt = js.Format(js.dense, js.dense, js.compressed(ordered=False), mode_ordering=(2, 0, 1))
  assert fmt.levels_of_dims == (1, 2, 0) and not fmt.ordered
  assert js.Format().n_sparse == 0 and js.Format().unique


# -- resolve_format --------------------------------------------------------------------------
def _case_id(v):
  """Readable ids: ``csr``, ``rank2``, ``n_batch1``; the expected Format gets none."""
  if isinstance(v, str):
    return v
  if isinstance(v, int):
    return f"rank{v}"
  if isinstance(v, dict):
    return "-".join(f"{k}{val}" for k, val in v.items()) or "plain"
  return "fmt"

@pytest.mark.parametrize("name, ndim, kw, expected", [
    ("coo", 1, {}, js.Format(js.compressed)),
    ("coo", 2, {}, js.COO),
    ("coo", 3, {}, util.COO3),
    ("coo", 4, dict(n_batch=1), util.COO3.replace(n_batch=1)),
    ("csr", 2, {}, js.CSR),
    ("CSR", 2, {}, js.CSR),
    ("csr", 4, dict(n_batch=1, n_dense=1), js.CSR.replace(n_batch=1, n_dense=1)),
    ("csc", 2, {}, js.CSC),
    ("csc", 3, dict(n_dense=1), js.CSC.replace(n_dense=1)),
    ("dcsr", 2, {}, js.DCSR),
    ("Dcsr", 3, dict(n_batch=1), js.DCSR.replace(n_batch=1)),
    ("csf", 1, {}, js.Format(js.compressed)),
    ("csf", 2, {}, js.DCSR),
    ("csf", 3, {}, js.CSF),
    ("csf", 5, dict(n_batch=1, n_dense=1), js.CSF.replace(n_batch=1, n_dense=1)),
], ids=_case_id)
def test_resolve_format_names(name, ndim, kw, expected):
  got = resolve_format(name, ndim, **kw)
  assert got == expected
  assert got.ndim == ndim


@pytest.mark.parametrize("name, ndim, kw, match", [
    ("csr", 3, {}, r"myfunc: format='csr' does not fit an array of rank 3 with n_batch=0, "
     r"n_dense=0: CSR stores exactly 2 sparse dimensions; got 3"),
    ("csc", 1, {}, r"format='csc' does not fit an array of rank 1.*CSC stores exactly 2"),
    ("dcsr", 4, dict(n_batch=1), r"DCSR stores exactly 2 sparse dimensions; got 3"),
    ("coo", 0, {}, r"COO needs at least 1 sparse dimension; got 0"),
    ("csf", 0, {}, r"CSF needs at least 1 sparse dimension; got 0"),
], ids=["csr_rank3", "csc_rank1", "dcsr_batch", "coo_rank0", "csf_rank0"])
def test_resolve_format_name_rank_errors(name, ndim, kw, match):
  with pytest.raises(SparseFormatError, match=match):
    resolve_format(name, ndim, func="myfunc", **kw)


@pytest.mark.parametrize("bad", ["bsr", "", "csr "], ids=["bsr", "empty", "trailing_space"])
def test_resolve_format_unknown_name_lists_known(bad):
  match = (r"myfunc: unknown format name; got format='" + bad + r"', expected one of "
           r"\('coo', 'csr', 'csc', 'dcsr', 'csf'\) or a js.Format")
  with pytest.raises(SparseFormatError, match=match):
    resolve_format(bad, 2, func="myfunc")


@pytest.mark.parametrize("bad", [None, 3, (js.dense, js.compressed)],
                         ids=["none", "int", "tuple"])
def test_resolve_format_wrong_type(bad):
  with pytest.raises(SparseFormatError, match=r"myfunc: format must be a js.Format or a name"):
    resolve_format(bad, 2, func="myfunc")


def test_resolve_format_object_batch_and_dense():
  assert resolve_format(js.CSR, 3, n_batch=1) == js.CSR.replace(n_batch=1)
  assert resolve_format(js.CSR.replace(n_batch=1), 3) == js.CSR.replace(n_batch=1)
  assert resolve_format(js.CSR.replace(n_batch=1), 3, n_batch=1) == js.CSR.replace(n_batch=1)
  assert resolve_format(js.CSC, 4, n_batch=1, n_dense=1) == js.CSC.replace(n_batch=1,
                                                                             n_dense=1)
  # COO and CSF formats adapt to the rank; others do not.
  assert resolve_format(js.COO, 3) == util.COO3
  assert resolve_format(js.CSF, 2) == js.DCSR
  assert resolve_format(js.CSF, 5, n_batch=2) == js.CSF.replace(n_batch=2)


@pytest.mark.parametrize("fmt, kw, match", [
    (js.CSR.replace(n_batch=1), dict(n_batch=2),
     r"myfunc: n_batch=2 conflicts with the format's own n_batch=1"),
    (js.CSR.replace(n_dense=1), dict(n_dense=2),
     r"myfunc: n_dense=2 conflicts with the format's own n_dense=1"),
], ids=["n_batch", "n_dense"])
def test_resolve_format_conflicts(fmt, kw, match):
  with pytest.raises(SparseFormatError, match=match):
    resolve_format(fmt, 5, func="myfunc", **kw)


@pytest.mark.parametrize("fmt, ndim, kw, match", [
    (js.CSR, 3, {}, r"myfunc: format Format\(dense, compressed\) has 2 sparse levels but the "
     r"array has 3 sparse dimensions \(rank 3, n_batch=0, n_dense=0\)"),
    (js.DCSR, 1, {}, r"has 2 sparse levels but the array has 1 sparse dimensions"),
    (util.DCSC, 4, dict(n_batch=1), r"has 2 sparse levels but the array has 3"),
    (js.COO, 2, dict(n_batch=2), r"has 2 sparse levels but the array has 0"),
], ids=["csr_rank3", "dcsr_rank1", "dcsc_batch", "coo_no_sparse"])
def test_resolve_format_level_count_mismatch(fmt, ndim, kw, match):
  with pytest.raises(SparseFormatError, match=match):
    resolve_format(fmt, ndim, func="myfunc", **kw)
