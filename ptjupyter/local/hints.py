"""Hints for failure causes users keep hitting: one table, used by every runner."""
from __future__ import annotations

import re
from typing import Optional

__all__ = ["hint_for"]

_HINTS = (
    (re.compile(r"Can't (?:pickle|get attribute) .*__main__|Can't get attribute '[^']+' on <module '__(?:mp_)?main__'"),
     "an object defined in __main__ (a notebook cell or script) was pickled by reference inside a worker "
     "(torch.save(model), DataLoader(num_workers>0), a multiprocessing queue): save model.state_dict(), use "
     "num_workers=0, or define it in a .py module the workers can import"),
    (re.compile(r"PicklingError|[Cc]an't pickle|cannot pickle|is not picklable|cannot be pickled"),
     "a value sent to or returned from the workers cannot be pickled; return plain data (numbers, tensors, dicts)"),
    (re.compile(r"RendezvousTimeoutError|(?i:rendezvous.*timed? ?out)|timed out.*rendezvous"),
     "the rendezvous timed out: not every rank joined (check nnodes / nproc_per_node, and that no rank died at "
     "start-up); rdzv_configs={'timeout': ...} sets the limit"),
    (re.compile(r"(?i)address already in use|EADDRINUSE"),
     "a port is already in use; do not hard-code MASTER_PORT in the function (ptjupyter picks a free port), or "
     "stop the process that holds it"),
    (re.compile(r"(?i)cannot re-initialize cuda in forked subprocess|CUDA.*initiali[sz]ed.*fork"),
     "CUDA was initialised in this process before the workers were forked; use start_method='spawn' (the "
     "default) or restart the kernel and do not touch torch.cuda before the run"),
    (re.compile(r"DistNetworkError|DistBackendError|(?i:timed out)"),
     "a collective or barrier timed out: a rank is stuck or died; --timeout S (timeout=S) stops every rank "
     "after S seconds"),
)


def hint_for(text: str) -> Optional[str]:
    """A one-line hint for a known cause found in a worker's traceback, else None."""
    for pattern, hint in _HINTS:
        if pattern.search(text or ""):
            return hint
    return None
