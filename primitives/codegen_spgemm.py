"""The C SpGEMM kernel (CSR x CSR -> CSR, Gustavson): its plan and its source.

The kernel is a real C file, ``backends/c/spgemm.c`` (shipped as package data); this
module only prepends the C runtime, the value and index types and the exported names.
Every size is read at run time (``m``, ``k`` and the capacities from the FFI buffers'
dims, ``n`` from the FFI attribute :meth:`SpgemmPlan.ffi_attributes`), so one compiled
kernel per value / index dtype serves every shape and capacity: a new shape costs no
compile.

Example:
  >>> import numpy as np
  >>> p = SpgemmPlan(4, 5, 6, 8, 9, 10, np.dtype(np.float32), np.dtype(np.int32))
  >>> p.name == SpgemmPlan(40, 50, 60, 1, 1, 1, p.dtype, p.index_dtype).name
  True
  >>> p.ffi_attributes()
  {'n': np.int64(6), 'swap': np.int64(0)}
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np

from .c_runtime import RUNTIME

SOURCE = Path(__file__).parent / "backends" / "c" / "spgemm.c"
_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_I_TYPES = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}


@dataclasses.dataclass(frozen=True)
class SpgemmPlan:
  """A CSR x CSR -> CSR product: sizes ``(m, k) x (k, n)``, capacities, dtypes. With
  ``swapped`` the FFI operands come in the order ``(B, A)`` (a CSC x CSC -> CSC product
  ``C = A B`` is the CSR product ``C^T = B^T A^T`` of the same buffers).

  Only the dtypes are part of the kernel (it reads sizes and capacities at run time),
  so :attr:`name` and the source depend only on them.
  """
  m: int
  k: int
  n: int
  nse_a: int
  nse_b: int
  nse_out: int
  dtype: np.dtype
  index_dtype: np.dtype
  swapped: bool = False     # operands come as (B, A): CSC x CSC -> CSC as C^T = B^T A^T
  batch: int = 1            # batch elements (leading buffer dims), computed in turn

  @property
  def name(self) -> str:
    return _name(np.dtype(self.dtype), np.dtype(self.index_dtype))

  def ffi_attributes(self) -> dict:
    """The FFI attributes of a call: the sizes the buffers do not carry (``n``)."""
    return {"n": np.int64(self.n), "swap": np.int64(self.swapped)}


@functools.lru_cache(maxsize=None)
def _text() -> str:
  return SOURCE.read_text()


@functools.lru_cache(maxsize=None)
def _source(dtype: np.dtype, index_dtype: np.dtype) -> tuple[str, str]:
  prelude = (f"typedef {_C_TYPES[dtype]} T;\ntypedef {_I_TYPES[index_dtype]} I;\n")
  key = hashlib.sha256((prelude + _text()).encode()).hexdigest()[:16]
  name = f"jscorch_spgemm_{key}"
  header = (f"/* jscorch kernel {name}: ij,jk->ik, CSR x CSR -> CSR (Gustavson), "
            f"{dtype.name} values, {index_dtype.name} indices; sizes read at run time */\n")
  names = f"#define SPGEMM_NAME {name}\n#define SPGEMM_COUNT_NAME {name}_count\n"
  return name, header + RUNTIME + prelude + names + '#line 1 "spgemm.c"\n' + _text()


def _name(dtype: np.dtype, index_dtype: np.dtype) -> str:
  return _source(dtype, index_dtype)[0]


def generate(plan: SpgemmPlan) -> str:
  """The C source of the SpGEMM kernel (FFI handler ``plan.name``) and its counter
  (``plan.name + "_count"``)."""
  return _source(np.dtype(plan.dtype), np.dtype(plan.index_dtype))[1]
