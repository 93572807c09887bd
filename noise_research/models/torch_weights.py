"""Read a PyTorch ``state_dict`` file with numpy only: no torch at run time.

``torch.save`` writes one of two formats, both pickles of the ``state_dict`` whose tensors refer to
raw storages by a *persistent id*:

* **legacy** (``_use_new_zipfile_serialization=False``, and every file saved before torch 1.6, such
  as pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``): five pickles in a row — a magic
  number, the protocol version (1001), the system info (byte order, type sizes), the object, the
  sorted list of storage keys — then each storage's raw data in that order, each preceded by its
  element count as a little-endian int64.
* **zip** (the default since torch 1.6): ``<name>/data.pkl`` holds the object and
  ``<name>/data/<key>`` each storage's raw bytes.

Both are read here by a restricted :class:`pickle.Unpickler` that only resolves the handful of
globals a ``state_dict`` needs (``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter``, the ``torch.*Storage`` types); any other global — the way a
malicious pickle runs code — stops the load with :class:`TorchFileError`. Tensors come back as
numpy arrays (bfloat16 through ``ml_dtypes``), in torch's layout (convolution kernels ``OIHW``);
:mod:`noise_research.models.inception` maps them to Flax params.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """A file that is not a readable torch ``state_dict`` (or would need code to unpickle)."""


class _StorageType:
    """Stands for a ``torch.*Storage`` class in the pickle: only its numpy dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage whose bytes are read after the pickle (legacy) or from the archive (zip)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self.data is None:
            raise TorchFileError("a tensor refers to a storage whose data the file does not hold")
        return self.data


class _StorageView:
    """A slice of a storage (torch < 1.6 pickled storage views as ``(key, offset, size)``)."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        self.root, self.offset, self.numel = root, offset, numel
        self.dtype = root.dtype

    def array(self) -> np.ndarray:
        return self.root.array()[self.offset : self.offset + self.numel]


class _LazyTensor:
    """``torch._utils._rebuild_tensor_v2``'s arguments, materialised once the storages are read."""

    def __init__(
        self,
        storage: _Storage | _StorageView,
        offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
    ):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return np.array(flat[self.offset])
        if any(dim == 0 for dim in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum(
            (dim - 1) * step for dim, step in zip(self.size, self.stride, strict=True)
        )
        if self.offset < 0 or last >= flat.size:
            raise TorchFileError(
                f"a tensor of size {self.size} and stride {self.stride} at offset {self.offset} "
                f"reaches past its storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(step * flat.itemsize for step in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *unused: Any) -> _LazyTensor:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
    metadata])`` and ``_rebuild_tensor(storage, offset, size, stride)``: the tensor, lazily."""
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool = False, *unused: Any) -> Any:
    """``torch._utils._rebuild_parameter(data, requires_grad, hooks)``: the parameter's tensor."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a ``state_dict``; storages come through ``persistent_load``."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        raise TorchFileError(
            f"the pickle refers to {module}.{name}, which a state_dict of tensors does not need; "
            "refusing to load it (only OrderedDict, torch tensors and storages are allowed)"
        )

    def persistent_load(self, pid: Any) -> _Storage | _StorageView:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"unsupported persistent id {pid!r} (only tensor storages are)")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"storage {key!r} has an unsupported type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        storage = self.storages[key]
        if view_metadata is not None:
            _view_key, offset, view_numel = view_metadata
            return _StorageView(storage, int(offset), int(view_numel))
        return storage


def _materialise(obj: Any) -> Any:
    """Replaces every lazy tensor in dicts, lists and tuples by its numpy array."""
    if isinstance(obj, _LazyTensor):
        return obj.numpy()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((key, _materialise(value)) for key, value in obj.items())
    if isinstance(obj, dict):
        return {key: _materialise(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_materialise(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(value) for value in obj)
    return obj


def _read_legacy(file: BinaryIO, path: str) -> Any:
    """The legacy format: magic, protocol, sys info, object, storage keys, raw storages."""

    def plain_pickle() -> Any:
        return _RestrictedUnpickler(file, {}).load()

    try:
        magic = plain_pickle()
    except Exception as error:
        raise TorchFileError(
            f"{path} is neither a zip archive nor a legacy torch file (its first pickle does not "
            f"read: {error}); the tar format of torch < 0.4 is not supported"
        ) from error
    if magic != LEGACY_MAGIC_NUMBER:
        raise TorchFileError(f"{path} is not a torch file (magic number {magic!r})")
    protocol = plain_pickle()
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise TorchFileError(f"{path}: unsupported torch file protocol version {protocol!r}")
    sys_info = plain_pickle()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchFileError(f"{path} was written on a big-endian machine; not supported")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(file, storages).load()
    keys = plain_pickle()
    for key in keys:
        key = str(key)
        if key not in storages:
            raise TorchFileError(f"{path}: storage {key!r} is listed but no tensor uses it")
        storage = storages[key]
        header = file.read(8)
        if len(header) != 8:
            raise TorchFileError(f"{path} is truncated (storage {key!r} has no data)")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * storage.dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise TorchFileError(f"{path} is truncated in storage {key!r}")
        storage.data = np.frombuffer(raw, storage.dtype)
    return obj


def _read_zip(path: str) -> Any:
    """The zip format: ``<name>/data.pkl`` and ``<name>/data/<key>``."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise TorchFileError(f"{path} is a zip archive but not a torch file (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names and archive.read(byteorder_name).strip() != b"little":
            raise TorchFileError(f"{path} was written in big-endian byte order; not supported")
        storages: dict[str, _Storage] = {}
        with archive.open(pickles[0]) as file:
            obj = _RestrictedUnpickler(file, storages).load()
        for key, storage in storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise TorchFileError(f"{path}: storage {key!r} is missing from the archive")
            raw = archive.read(name)
            storage.data = np.frombuffer(raw, storage.dtype)[: storage.numel]
    return obj


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads the ``state_dict`` that ``torch.save`` wrote to ``path``, as ``{name: numpy array}``.

    Both the legacy format (pytorch-fid's weights) and the zip format are read, without torch;
    tensors keep torch's layout. A file that needs anything but tensors, storages and
    ``OrderedDict`` to unpickle is refused (:class:`TorchFileError`), as is a missing file
    (``FileNotFoundError``). A top-level ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no torch weights file at {path}")
    if zipfile.is_zipfile(path):
        obj = _read_zip(path)
    else:
        with open(path, "rb") as file:
            obj = _read_legacy(file, path)
    obj = _materialise(obj)
    if isinstance(obj, dict) and set(obj) == {"state_dict"}:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise TorchFileError(f"{path} does not hold a state_dict of tensors")
    return dict(obj)
