"""One of two processes of ``test_multiprocess.py``: the same sharded code under jax.distributed.

Run as ``python _mp_worker.py <process_id> <port>`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``: two processes × two CPU
devices form one 4-device mesh; collectives between the processes go through gloo.
Prints ``OK <process_id> <largest error>`` or raises.
"""
import sys

import jax

process_id, port = int(sys.argv[1]), int(sys.argv[2])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process_id, initialization_timeout=120)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import jscorch as js  # noqa: E402
from jscorch import distributed as jsd  # noqa: E402
from jscorch import nn  # noqa: E402
from jscorch.bench import data  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
m = data.rmat(8, 1500, seed=3).scipy()          # the same host data on both processes
m = (m + m.T).tocsr()
n = m.shape[0]
x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
a64 = m.astype(np.float64)
errors = []


def check(got, want):
  want = np.asarray(want, np.float64)
  err = float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(1, np.abs(want).max()))
  errors.append(err)
  assert err < 1e-5, (len(errors), err)


A = js.from_scipy(m)
mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,))
As = jsd.shard(A, mesh, axis="x")
assert not As.data.is_fully_addressable
xs = As.shard_cols(x)
for exchange in ("halo", "allgather"):
  y = jax.jit(lambda a, v, ex=exchange: jsd.spmm(a, v, exchange=ex))(As, xs)
  check(As.unshard_rows(y), a64 @ x)
# sharded arrays are arguments, never closed over: a closure would embed a constant that
# spans other processes' devices
grad = jax.jit(jax.grad(lambda v, a: jnp.sum(jsd.spmm(a, v) ** 2)))(xs, As)
check(As.unshard_cols(grad), 2 * a64.T @ (a64 @ x))
check(As.unshard().to_scipy().toarray(), a64.toarray())
# a jscorch.nn layer given the sharded adjacency, the parameters as arguments
conv = nn.GCNConv(4, 3, rngs=nnx.Rngs(0))
graphdef, params = nnx.split(conv)
layer = jax.jit(lambda p, a, v: nnx.merge(graphdef, p)(a, v))
check(As.unshard_rows(layer(params, As, xs)), conv(A, x))
mesh2 = jax.make_mesh((2, 2), ("r", "c"), axis_types=(AxisType.Auto,) * 2)
A2 = jsd.shard(A, mesh2, axis=("r", "c"), reorder="degree")
check(A2.unshard_rows(jax.jit(jsd.spmm)(A2, A2.shard_cols(x))), a64 @ x)
print("OK", process_id, max(errors), flush=True)
jax.distributed.shutdown()
