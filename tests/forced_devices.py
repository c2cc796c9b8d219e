"""The environment of a subprocess on `n` forced CPU host devices (XLA_FLAGS is read when jax
starts, so each device count needs a process of its own); keeps the XLA flags the tests run
with (tests/conftest.py)."""

import os


def env(n: int, **extra) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    return {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu", **extra}
