"""Count where a run reads device data on the host, without a GPU: run it on the meta device.

A meta tensor has a shape and no values, so any host read of one (`.item()`, `.tolist()`, `.cpu()`, `bool()`,
a copy into a CPU tensor) fails, and so does every operation whose output shape depends on values (`nonzero`,
boolean-mask indexing): exactly the operations that synchronise the host with a GPU. `DeviceReads` answers
the host reads instead of failing, with a stand-in value, and records each one with the function that made it.
Value-dependent shapes still fail. So a block loop run on the meta device under `DeviceReads` shows every
device-to-host transfer it would make on a GPU, and proves there is no other.

The patches are on `torch.Tensor` and are active only inside the `with` block; tensors not on the meta device
behave as usual. A verification tool: it lives beside the package (nothing in `tokentrim` patches torch).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

# (site, meta tensor) -> a CPU tensor of that tensor's shape and dtype
Answer = Callable[[str, torch.Tensor], torch.Tensor]
_TORCH_DIR = str(Path(torch.__file__).parent)

# Conversions that read a tensor's values on the host: the stand-in's own method gives the result.
_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__array__")


def zeros(site: str, t: torch.Tensor) -> torch.Tensor:
    """The default stand-in: zeros."""
    return torch.zeros(t.shape, dtype=t.dtype)


def caller_site(*skip: str) -> str:
    """`module:function` of the innermost caller outside torch, this module and the files in `skip`."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name != __file__ and name not in skip and not name.startswith(_TORCH_DIR):
            return f"{frame.f_globals.get('__name__', name)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def _is_meta(x) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type == "meta"


@dataclass
class DeviceReads:
    """Context manager recording host reads of meta tensors; `reads` lists their sites in call order.

    answer: gives the stand-in values (a CPU tensor of the read tensor's shape and dtype) from the site and the
    tensor; default zeros. A scripted answer lets a run take the branches its real values would.
    """

    answer: Answer = zeros
    reads: list[str] = field(default_factory=list)

    def counts(self) -> Counter:
        return Counter(self.reads)

    def _stand_in(self, t: torch.Tensor) -> torch.Tensor:
        site = caller_site()
        self.reads.append(site)
        value = self.answer(site, t)
        assert value.device.type == "cpu" and value.shape == t.shape, f"bad stand-in for {site}"
        return value.to(t.dtype)

    def __enter__(self) -> DeviceReads:
        cls, saved = torch.Tensor, {}
        for name in (*_READS, "cpu", "to", "copy_", "__setitem__"):
            saved[name] = getattr(cls, name)
        self._own = {name: cls.__dict__[name] for name in saved if name in cls.__dict__}  # others: inherited
        self._saved = saved
        stand_in = self._stand_in

        def reader(name: str):
            original = saved[name]

            def read(t, *args, **kwargs):
                if _is_meta(t):
                    return getattr(stand_in(t), name)(*args, **kwargs)
                return original(t, *args, **kwargs)

            return read

        def cpu(t, *args, **kwargs):
            return stand_in(t) if _is_meta(t) else saved["cpu"](t, *args, **kwargs)

        def to(t, *args, **kwargs):
            if _is_meta(t):
                target = torch._C._nn._parse_to(*args, **kwargs)[0]  # Tensor.to's own parsing; None: stays
                if target is not None and target.type != "meta":
                    return saved["to"](stand_in(t), *args, **kwargs)
            return saved["to"](t, *args, **kwargs)

        def copy_(t, src, *args, **kwargs):
            if _is_meta(src) and not _is_meta(t):
                src = stand_in(src)
            return saved["copy_"](t, src, *args, **kwargs)

        def setitem(t, key, value):
            if _is_meta(value) and not _is_meta(t):
                value = stand_in(value)
            return saved["__setitem__"](t, key, value)

        for name in _READS:
            setattr(cls, name, reader(name))
        cls.cpu, cls.to, cls.copy_, cls.__setitem__ = cpu, to, copy_, setitem
        return self

    def __exit__(self, *exc) -> None:
        for name in self._saved:
            if name in self._own:
                setattr(torch.Tensor, name, self._own[name])
            else:
                delattr(torch.Tensor, name)
