"""Joining a multi-process run, and what the processes of one agree on (docs/method.md §9).

`join()` runs before any other jax call in every process of a cluster job. It calls
`jax.distributed.initialize()` whenever the environment names a cluster of more than one
process: the environments jax detects itself (Cloud TPU pods, SLURM, Open MPI, Kubernetes), or
`JAX_COORDINATOR_ADDRESS` with `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` for anything else. A join
that fails is a `ClusterError` (one sentence, non-zero exit), never a silent single process: a
host that trained alone would write into the shared workdir beside the others.

Once joined, the processes meet at `barrier(name)` and share small strings with `share(name,
value)` through jax's coordination service, not through device collectives, so a wait of hours
(one process building S' while the others wait) is not cut by a collective's timeout.
"""

from __future__ import annotations

import itertools
import os

# Seconds a process waits for the others to join (jax's default is 300).
JOIN_TIMEOUT_ENV = "MENET_JOIN_TIMEOUT_S"
_counter = itertools.count()


class ClusterError(RuntimeError):
    """The processes of a cluster job could not join or meet."""


def detected() -> tuple[str, int] | None:
    """(the environment's name, its number of processes) when this process is one of a cluster
    job of more than one process, else None. Reads the environment only."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        num = os.environ.get("JAX_NUM_PROCESSES")
        if num is None or os.environ.get("JAX_PROCESS_ID") is None:
            raise ClusterError(
                "JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES or JAX_PROCESS_ID is "
                "not: set all three (or none) to join a multi-process run"
            )
        return ("JAX_COORDINATOR_ADDRESS", _int_env("JAX_NUM_PROCESSES", num))
    try:  # the cluster environments jax's own initialize() detects
        from jax._src.clusters import ClusterEnv
    except ImportError:  # pragma: no cover - a jax without the private registry
        return None
    for env in ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            present = env.is_env_present()
            count = env.get_process_count() if present else 0
        except Exception:  # noqa: BLE001 - a half-set environment is not a cluster
            continue
        if present and count > 1:
            return (env.name if hasattr(env, "name") else env.__name__, int(count))
    return None


def _int_env(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ClusterError(f"{name}={value!r} is not an integer") from None


def join() -> None:
    """Joins this process to its cluster job when the environment names one (else nothing).

    Raises:
      ClusterError: the environment names a cluster and the join failed.
    """
    found = detected()
    if found is None:
        return
    import jax

    name, count = found
    kwargs = {}
    if name == "JAX_COORDINATOR_ADDRESS":
        kwargs = {
            "num_processes": count,
            "process_id": _int_env("JAX_PROCESS_ID", os.environ["JAX_PROCESS_ID"]),
        }
    timeout = _int_env(JOIN_TIMEOUT_ENV, os.environ.get(JOIN_TIMEOUT_ENV, "300"))
    try:
        jax.distributed.initialize(initialization_timeout=timeout, **kwargs)
    except Exception as e:  # noqa: BLE001 - jax raises several types for a failed join
        first = " ".join(str(e).split())[:300]
        raise ClusterError(
            f"this process could not join its {count}-process cluster job ({name}) within "
            f"{timeout} s: {type(e).__name__}: {first}; check that every process started and "
            f"can reach the coordinator (set {JOIN_TIMEOUT_ENV} to wait longer)"
        ) from None


def _client():
    import jax

    if jax.process_count() == 1:
        return None
    from jax._src import distributed

    return distributed.global_state.client


def barrier(name: str, *, timeout_s: float = 600.0) -> None:
    """Waits until every process reached the barrier `name` (nothing in a single process).

    Every process must call the same barriers in the same order.
    """
    client = _client()
    if client is None:
        return
    key = f"menet/{name}/{next(_counter)}"
    try:
        client.wait_at_barrier(key, int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001
        raise ClusterError(
            f"the processes did not all reach {name!r} within {timeout_s:.0f} s "
            f"({' '.join(str(e).split())[:200]}); another process failed or is still working"
        ) from None


def share(name: str, value: str | None, *, timeout_s: float = 600.0) -> str:
    """Process 0's `value` on every process (the argument is ignored elsewhere)."""
    import jax

    client = _client()
    if client is None:
        return str(value)
    key = f"menet/share/{name}/{next(_counter)}"
    if jax.process_index() == 0:
        client.key_value_set(key, str(value))
    return client.blocking_key_value_get(key, int(timeout_s * 1000))


# ---------------------------------------------------------------------------------------------
# The supervisor: jax ends a process whose join (or whose cluster) failed from C++ (an abort with
# a stack trace), which Python cannot catch. A cluster job's process therefore runs its command
# as a child and turns such an end into one line.

SUPERVISED_ENV = "MENET_SUPERVISED"
_FATAL = "Terminating process because the JAX distributed service"


def needs_supervisor() -> bool:
    """True in a process of a cluster job that is not yet the supervised child."""
    return not os.environ.get(SUPERVISED_ENV) and detected() is not None


def supervise(module: str, argv: list[str]) -> int:
    """Runs `python -m module *argv` as a child, forwarding signals, stdout and stderr.

    Returns the child's exit code (128 + N when it died of signal N), or 1 after one line on
    stderr when jax's distributed service ended it (a failed join, or another process died).
    """
    import signal
    import subprocess
    import sys

    name, count = detected()
    env = {**os.environ, SUPERVISED_ENV: "1"}
    child = subprocess.Popen([sys.executable, "-m", module, *argv], env=env, stderr=subprocess.PIPE)
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    previous = {s: signal.signal(s, lambda sig, _f: child.send_signal(sig)) for s in forwarded}
    try:
        fatal = _forward_stderr(child.stderr.fileno(), sys.stderr)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if fatal is None:
        return 128 - code if code < 0 else code
    report = fatal.split("absl::Status:", 1)[-1].split("*** Check failure", 1)[0]
    status = " ".join(report.split())[:200]
    if "RegisterTask" in fatal or "Connect" in fatal:
        why = (
            f"this process could not join its {count}-process cluster job ({name}): {status}; "
            f"check that every process started and can reach the coordinator (set "
            f"{JOIN_TIMEOUT_ENV} to wait longer than the default 300 s)"
        )
    else:
        why = (
            f"the {count}-process cluster job ({name}) stopped: {status}; another process "
            "probably failed (see its log); the same command resumes from the last checkpoint"
        )
    print(f"error: {why}", file=sys.stderr)
    return 1


def _forward_stderr(fd: int, out) -> str | None:
    """Copies the child's stderr to `out` as it comes until EOF; returns jax's fatal report
    (not copied: an abort's stack trace) if one came. A line that may start the report (absl's
    'F' + date prefix) is held until it is complete; everything else passes at once, so progress
    bars stay live."""
    pending, fatal = b"", None
    while chunk := os.read(fd, 65536):
        if fatal is not None:
            fatal += chunk.decode(errors="replace")
            continue
        pending += chunk
        while pending:
            cut = min((i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0), default=-1)
            if cut < 0 and not (pending[:1] == b"F" and pending[1:2].isdigit() or len(pending) < 2):
                out.write(pending.decode(errors="replace"))  # a partial line: pass it now
                pending = b""
                break
            if cut < 0:
                break  # hold a possible report line until it ends
            line, pending = pending[: cut + 1], pending[cut + 1 :]
            text = line.decode(errors="replace")
            if _FATAL in text:
                fatal = text + pending.decode(errors="replace")
                pending = b""
                break
            out.write(text)
        out.flush()
    if pending and fatal is None:
        out.write(pending.decode(errors="replace"))
        out.flush()
    return fatal
