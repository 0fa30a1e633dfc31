"""Rank 0's return value, read back from the marker lines the pod entrypoint prints.

The markers are ``##ptjupyter-result <nonce> <i>/<n> <base64 chunk>`` (or ``too-large <bytes>`` or
``error <text>``), as written by :func:`ptjupyter.k8s.entrypoint.emit_result`; the nonce tells them apart
from a user's own output.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Optional

from .entrypoint import MARK, RESULT_LIMIT
from .errors import ResultUnreadable

__all__ = ["MARK", "RESULT_LIMIT", "ResultReader", "decode"]


class ResultReader:
    """Collects one container's marker lines. :meth:`feed` says whether a line was one (then it is not shown).

    After the stream: ``b64`` is the whole value (None until every chunk came), ``note`` says why no
    value comes back although the run succeeded, ``corrupt`` says why the markers could not be read.
    """

    def __init__(self, nonce: str):
        self.nonce = nonce
        self.chunks: dict = {}
        self.total: Optional[int] = None
        self.b64: Optional[str] = None
        self.note: Optional[str] = None
        self.corrupt: Optional[str] = None

    def feed(self, text: str) -> bool:
        """True when ``text`` is a marker line of this job (whatever it holds)."""
        if not self.nonce or not text.startswith(MARK + " "):
            return False
        parts = text.split(" ", 4)
        if len(parts) < 3 or parts[1] != self.nonce:
            return False  # a user's line that looks like one, or another job's
        kind, rest = parts[2], parts[3:]
        if kind == "too-large":
            self.note = (f"rank 0 returned a value of {rest[0] if rest else '?'} bytes pickled; over the "
                         f"{RESULT_LIMIT // 1024} KiB that come back through the log: save it to storage instead "
                         "(the run itself succeeded)")
        elif kind == "error":
            self.note = "rank 0's return value could not be sent back: " + " ".join(rest)
        else:
            self._chunk(kind, rest)
        return True

    def _chunk(self, kind: str, rest: list) -> None:
        i_txt, _, n_txt = kind.partition("/")
        try:
            i, n = int(i_txt), int(n_txt)
        except ValueError:
            self.corrupt = f"a result line is not '<i>/<n> <chunk>': {kind[:40]!r}"
            return
        if not rest or not 1 <= i <= n or (self.total is not None and n != self.total):
            self.corrupt = f"result chunk {kind[:40]} does not fit the others"
            return
        if i == 1 and self.chunks and self.b64 is not None:
            self.chunks = {}  # a new container wrote its value again: the last one counts
        self.total = n
        self.chunks[i] = rest[0]
        if len(self.chunks) == n:
            self.b64 = "".join(self.chunks[k] for k in range(1, n + 1))
            self.corrupt = None


def decode(b64: str, job: str) -> Any:
    """The value the chunks hold; ``ResultUnreadable`` (naming ``job``, which ran) when they cannot be."""
    import cloudpickle

    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ResultUnreadable(f"job {job} ran, but rank 0's return value could not be read back from its log: "
                               f"the result lines are not valid base64 ({e})") from None
    try:
        return cloudpickle.loads(data)
    except Exception as e:  # noqa: BLE001 - whatever unpickling raises, the job itself has run
        first = (str(e).splitlines() or [""])[0][:200]
        raise ResultUnreadable(f"job {job} ran, but rank 0's return value could not be unpickled here: "
                               f"{type(e).__name__}: {first}") from None
