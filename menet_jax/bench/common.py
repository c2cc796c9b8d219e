"""What the benchmarks share: the output convention, the error style, timing, the device.

Every result is one `name: value` line on stdout (`report`), so a run can be grepped, diffed
and pasted into BENCHMARKS.md. Each benchmark's options are absl flags in a `menet_jax.cli.Options`
of its own; a command line the benchmark cannot run with (an unknown option, a value out of
range) is a `cli.UsageError`, which `fail` prints as one `error: <sentence>` line on stderr with
exit code 2. A `--config` file that cannot be loaded is one line and exit code 1, as in
`menet_jax.main`.
"""

import sys
import time
from collections.abc import Callable
from typing import Any

import jax


def report(name: str, value: Any) -> None:
    """Prints one result as a `name: value` line."""
    print(f"{name}: {value}", flush=True)


def fail(error: Exception | str) -> int:
    """Prints `error: <error>` on stderr; returns the exit code of a usage error, 2."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return 2


def devices() -> tuple[str, int, str]:
    """(backend name, device count, the first device's kind), for a run's header lines."""
    return jax.default_backend(), jax.device_count(), jax.devices()[0].device_kind


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """Runs fn(*args) and waits for its arrays; returns (wall seconds, result)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def compiled(fn: Callable[..., Any], *example_args: Any) -> Callable[..., Any]:
    """jax.jit(fn), compiled and run once on example_args, so a later call times only the run."""
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*example_args))
    return jitted
