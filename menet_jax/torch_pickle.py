"""A reader of PyTorch checkpoint files that needs no torch and runs no code from the file.

`load(path)` reads what `torch.save` writes, in both of its serialisations:

- legacy (torch < 1.6, and `_use_new_zipfile_serialization=False`): five pickles in a row (the
  magic number, the protocol version, a sys-info dict, the object, the sorted list of storage
  keys), then for each storage in that order an 8-byte little-endian element count and its raw
  little-endian bytes;
- zip (torch >= 1.6): `<name>/data.pkl` holds the object, `<name>/data/<key>` each storage's raw
  bytes.

In both, the object pickle refers to storages by persistent ids `('storage', <storage class>,
key, location, numel[, view])`; tensors are calls of `torch._utils._rebuild_tensor_v2` on them.
Here tensors come back as numpy arrays (on the host, whatever `location` says).

Unpickling calls only an exact allowlist of globals (`ALLOWED`): the tensor and storage rebuild
functions, `collections.OrderedDict`, the builtins a protocol-2 pickle names, and the module
classes of the ME-Net authors' ResNet (`models.resnet.ResNet` / `BasicBlock` and the
`torch.nn` layers they use, `nn.DataParallel`), which become inert `Module` stand-ins holding
the pickled `__dict__` (`_parameters`, `_buffers`, `_modules`, ...). Any other global ends the
read with `TorchPickleError` naming it, before anything is called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchPickleError(ValueError):
    """The file is not a PyTorch checkpoint this reader can read, or names a refused global."""


class Module:
    """An inert stand-in for a pickled `torch.nn.Module`: its class name and its `__dict__`."""

    torch_class = "Module"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TorchPickleError(f"a pickled {self.torch_class} has no attribute dict")
        self.__dict__.update(state)

    def children(self) -> dict[str, Module]:
        """The pickled `_modules` (an empty dict when absent)."""
        return dict(self.__dict__.get("_modules") or {})

    def __repr__(self) -> str:
        return f"<{self.torch_class} stand-in>"


def _module_class(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[1], (Module,), {"torch_class": qualified})


class _StorageType:
    """A storage class named in a persistent id (`torch.FloatStorage`, ...): its numpy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, _storage_dtype(name)


def _storage_dtype(name: str) -> np.dtype:
    if name in _DTYPES:
        return np.dtype(_DTYPES[name])
    if name == "BFloat16Storage":
        import ml_dtypes  # installed with jax

        return np.dtype(ml_dtypes.bfloat16)
    raise TorchPickleError(f"storages of type {name} are not supported")


class _Storage:
    """A storage referenced by the object pickle; its bytes are filled in after unpickling."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, int(numel)
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor whose storage may not be read yet; `resolve` turns it into a numpy array."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def resolve(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise TorchPickleError(f"storage {self.storage.key!r} has no data in the file")
        if not self.size:
            return np.array(data[self.offset])
        itemsize = data.dtype.itemsize
        needed = (
            self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        )
        if min(self.size) > 0 and needed > len(data):
            raise TorchPickleError(
                f"a tensor of shape {self.size} runs past the end of storage {self.storage.key!r}"
            )
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_rest):
    if not isinstance(storage, _Storage):
        raise TorchPickleError("a tensor in the file is not built on a storage")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_rest):
    return data


def _thnn_backend():  # torch 0.4's pickled module backend: dropped
    return None


def _device(*args):
    return ":".join(str(a) for a in args)


def _set(items=()):
    return set(items)


_STORAGES = {f"torch.{name}": name for name in [*_DTYPES, "BFloat16Storage"]}
_LAYERS = [
    "models.resnet.ResNet",
    "models.resnet.BasicBlock",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.container.Sequential",
    "torch.nn.parallel.data_parallel.DataParallel",
]
ALLOWED: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.nn.parameter.Parameter": _rebuild_parameter,  # torch 0.4: Parameter(tensor, grad)
    "torch.nn.backends.thnn._get_thnn_function_backend": _thnn_backend,
    "torch.device": _device,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": _set,
    "__builtin__.set": _set,
    **{name: _module_class(name) for name in _LAYERS},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only `ALLOWED` globals; storages come from `storage_for(persistent id)`."""

    def __init__(self, file, storage_for):
        super().__init__(file, encoding="latin1")
        self._storage_for = storage_for

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in _STORAGES:
            return _StorageType(_STORAGES[qualified])
        if qualified not in ALLOWED:
            raise TorchPickleError(
                f"the checkpoint names the global {qualified}, which is not on the allowlist of "
                "a PyTorch ResNet checkpoint; refusing to load it (nothing was run)"
            )
        return ALLOWED[qualified]

    def persistent_load(self, pid):
        kind = _ascii(pid[0]) if isinstance(pid, tuple) and pid else None
        if kind == "module" and len(pid) > 1 and isinstance(pid[1], type):
            return pid[1]  # legacy: a module class (already allowlisted) and its source text
        if kind != "storage":
            raise TorchPickleError(f"unknown persistent id {str(pid)[:80]!r} in the checkpoint")
        return self._storage_for(pid[1:])


def _ascii(v) -> str:
    return v.decode("ascii") if isinstance(v, bytes) else str(v)


def _unpickle(data: bytes | io.BufferedIOBase, storage_for) -> Any:
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return _Unpickler(file, storage_for).load()
    except TorchPickleError:
        raise
    except Exception as e:  # a truncated or foreign pickle raises many types
        raise TorchPickleError(
            f"the object pickle could not be read ({type(e).__name__}: {str(e)[:120]})"
        ) from None


def _resolve(obj: Any, seen: dict[int, Any] | None = None) -> Any:
    """Replaces every `_Tensor` inside containers and module stand-ins by its numpy array."""
    seen = {} if seen is None else seen
    if id(obj) in seen:
        return seen[id(obj)]
    if isinstance(obj, _Tensor):
        out = seen[id(obj)] = obj.resolve()
        return out
    if isinstance(obj, dict):
        seen[id(obj)] = obj
        for k in list(obj):
            obj[k] = _resolve(obj[k], seen)
        return obj
    if isinstance(obj, list):
        seen[id(obj)] = obj
        obj[:] = [_resolve(v, seen) for v in obj]
        return obj
    if isinstance(obj, tuple):
        out = seen[id(obj)] = tuple(_resolve(v, seen) for v in obj)
        return out
    if isinstance(obj, Module):
        seen[id(obj)] = obj
        _resolve(obj.__dict__, seen)
        return obj
    return obj


def _storage_table():
    storages: dict[str, _Storage] = {}

    def storage_for(args) -> _Storage:
        if len(args) < 4 or not isinstance(args[0], _StorageType):
            raise TorchPickleError("a storage reference in the checkpoint is malformed")
        storage_type, key, _location, numel = args[:4]
        key = _ascii(key)
        if key not in storages:
            storages[key] = _Storage(key, storage_type.dtype, numel)
        view = args[4] if len(args) > 4 else None
        if view is None:
            return storages[key]
        view_key, offset, view_numel = _ascii(view[0]), int(view[1]), int(view[2])
        if view_key not in storages:
            storages[view_key] = _View(storages[key], offset, view_numel)
        return storages[view_key]

    return storages, storage_for


class _View(_Storage):
    """A legacy-format storage view: `numel` elements of `root` from `offset` on."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        super().__init__(f"{root.key}+{offset}", root.dtype, numel)
        self.root, self.view_offset = root, offset

    @property
    def data(self):
        if self.root.data is None:
            return None
        return self.root.data[self.view_offset : self.view_offset + self.numel]

    @data.setter
    def data(self, value):
        pass


def _load_legacy(f) -> Any:
    def no_storage(_):
        raise TorchPickleError("a header pickle of the file refers to a storage")

    def header():  # restricted like the object pickle: a header names no global either
        try:
            return _Unpickler(f, no_storage).load()
        except TorchPickleError:
            raise
        except Exception:
            return None

    if header() != MAGIC_NUMBER:
        raise TorchPickleError("it is neither a zip archive nor a legacy torch.save file")
    if header() != PROTOCOL_VERSION:
        raise TorchPickleError("its legacy torch.save protocol version is not 1001")
    sys_info = header()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise TorchPickleError("it was written on a big-endian machine, which is not supported")
    storages, storage_for = _storage_table()
    obj = _unpickle(f, storage_for)
    keys = header()
    if not isinstance(keys, list):
        raise TorchPickleError("its list of storage keys is missing or malformed")
    for key in keys:
        storage = storages.get(_ascii(key))
        raw = f.read(8)
        if storage is None or len(raw) != 8:
            raise TorchPickleError(f"storage {key!r} is missing or truncated")
        (numel,) = struct.unpack("<q", raw)
        nbytes = numel * storage.dtype.itemsize
        buf = f.read(nbytes)
        if numel < 0 or len(buf) != nbytes:
            raise TorchPickleError(f"storage {key!r} is truncated")
        storage.data = np.frombuffer(buf, storage.dtype.newbyteorder("<"))
    return obj


def _load_zip(zf: zipfile.ZipFile) -> Any:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise TorchPickleError("the zip archive has no single <name>/data.pkl: not a torch.save")
    prefix = pkls[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
        raise TorchPickleError("it was written on a big-endian machine, which is not supported")
    storages, storage_for = _storage_table()
    obj = _unpickle(zf.read(pkls[0]), storage_for)
    for key, storage in storages.items():
        if isinstance(storage, _View):
            continue
        try:
            buf = zf.read(f"{prefix}data/{key}")
        except KeyError:
            raise TorchPickleError(f"storage {key!r} is missing from the archive") from None
        if len(buf) < storage.numel * storage.dtype.itemsize:
            raise TorchPickleError(f"storage {key!r} is truncated")
        storage.data = np.frombuffer(buf, storage.dtype.newbyteorder("<"))
    return obj


def load(path: str) -> Any:
    """Reads a `torch.save` file; tensors become numpy arrays, modules `Module` stand-ins.

    Raises:
      TorchPickleError: (one sentence) the file is missing, is not a PyTorch checkpoint, is
        truncated, or names a global outside `ALLOWED`.
    """
    if not os.path.isfile(path):
        raise TorchPickleError(f"{path} does not exist or is not a file")
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            f.seek(0)
            try:
                with zipfile.ZipFile(f) as zf:
                    return _resolve(_load_zip(zf))
            except zipfile.BadZipFile as e:
                raise TorchPickleError(f"the zip archive is damaged ({e})") from None
        f.seek(0)
        return _resolve(_load_legacy(f))
