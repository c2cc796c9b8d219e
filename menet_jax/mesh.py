"""The device mesh of a run, and running a batch function per device (docs/method.md §9).

`data_mesh()` is the 1-D mesh 'data' over every device of every process: training, S' and the
evaluation shard their batches over it. `per_device(fn, mesh, nargs)` runs `fn` on each device's
shard of its batch arguments (`jax.shard_map`): inside one jit over a sharded batch an iterative
solver's `while_loop` would stop on a global condition, a cross-device reduction every iteration
with every device waiting for the slowest matrix anywhere. The solvers treat each matrix on its
own, so per device they give what they give on one.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P


def data_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process, axis 'data' (Auto axis types)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def per_device(fn, mesh: jax.sharding.Mesh | None, nargs: int):
    """`fn` of `nargs` arrays sharded on their first axis over `mesh`'s 'data', run per device;
    `fn` itself when the mesh is None or holds one device."""
    if mesh is None or mesh.size == 1:
        return fn
    # check_vma=False: the solvers build loop carries from constants (not device-varying);
    # nothing inside communicates, so the per-device loops need no such bookkeeping.
    specs = (P("data"),) * nargs
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P("data"), check_vma=False)
