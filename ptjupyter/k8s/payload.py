"""The cell payload: cloudpickled function + metadata + entrypoint + cloudpickle, as the contents of a Secret
(a pickled cell may carry credentials the notebook holds; Secrets are what RBAC guards and a cluster encrypts).

Secret keys (flat; ``items`` in the pod volume map them to paths under the mount point):

- ``payload.pkl``: ``cloudpickle.dumps(fn)``
- ``meta.json``: ``{"format": 1, "python": "3.11.7", "cloudpickle": "3.1.3", "sha256": ..., "nonce": ..., "shipped": {...}}``
  checked by the entrypoint before it unpickles anything
- ``entrypoint.py``: :mod:`ptjupyter.k8s.entrypoint` (standard library only)
- ``lib.cloudpickle.*``: the notebook's own cloudpickle package, so the image needs torch only
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from ..errors import InvalidType, InvalidValue

__all__ = ["FORMAT", "LIMIT", "Payload", "build", "human"]

FORMAT = 1
LIMIT = 1024 * 1024  # a Secret holds at most 1 MiB of (decoded) data


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@dataclass
class Payload:
    data: dict  # text files (key -> str)
    binary: dict  # binary files (key -> base64 text)
    files: dict  # Secret key -> path under the mount point
    size: int  # bytes stored in the Secret (decoded)
    pickled: int  # bytes of the pickled function
    nonce: str
    sizes: dict = field(default_factory=dict)  # shipped name -> pickled bytes


def _sizes(shipped: Optional[Mapping[str, Any]], cloudpickle) -> dict:
    out = {}
    for name, value in (shipped or {}).items():
        try:
            out[name] = len(cloudpickle.dumps(value))
        except Exception:  # noqa: BLE001 - the whole-function pickle reports the real error
            out[name] = -1
    return out


def build(fn: Callable[[], Any], shipped: Optional[Mapping[str, Any]] = None, limit: int = LIMIT) -> Payload:
    """Pickle ``fn`` and pack everything the pod needs; raise a one-line ``InvalidValue`` over ``limit``."""
    import cloudpickle

    if not callable(fn):
        raise InvalidType(f"fn={fn!r} is not accepted; expected a zero-argument callable (the captured cell)")
    try:
        pickled = cloudpickle.dumps(fn)
    except Exception as e:  # noqa: BLE001
        raise InvalidType(f"the cell function cannot be pickled for the pods: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    sizes = _sizes(shipped, cloudpickle)
    nonce = secrets.token_hex(8)
    meta = {
        "format": FORMAT,
        "python": platform.python_version(),
        "cloudpickle": cloudpickle.__version__,
        "sha256": hashlib.sha256(pickled).hexdigest(),
        "nonce": nonce,
        "shipped": sizes,
    }
    data = {"meta.json": json.dumps(meta, sort_keys=True), "entrypoint.py": _read(os.path.join(os.path.dirname(__file__), "entrypoint.py"))}
    files = {"meta.json": "meta.json", "entrypoint.py": "entrypoint.py", "payload.pkl": "payload.pkl"}
    cp_dir = os.path.dirname(cloudpickle.__file__)
    for fname in sorted(os.listdir(cp_dir)):
        if fname.endswith(".py"):
            key = f"lib.cloudpickle.{fname}"
            data[key] = _read(os.path.join(cp_dir, fname))
            files[key] = f"lib/cloudpickle/{fname}"
    size = len(pickled) + sum(len(k) + len(v.encode()) for k, v in data.items()) + len("payload.pkl")
    if size > limit:
        top = sorted(((v, k) for k, v in sizes.items()), reverse=True)[:3]
        names = ", ".join(f"{k} ({human(v)})" for v, k in top if v >= 0) or "none captured (the function itself is large)"
        raise InvalidValue(
            f"payload={human(size)} is not accepted; a Secret holds at most {human(limit)}: the largest captured "
            f"values are {names}; load large data inside the cell (from a file/URL/volume) instead of capturing it"
        )
    return Payload(data=data, binary={"payload.pkl": base64.b64encode(pickled).decode()}, files=files,
                   size=size, pickled=len(pickled), nonce=nonce, sizes=sizes)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
