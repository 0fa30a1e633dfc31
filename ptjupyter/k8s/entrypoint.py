"""ptjupyter pod entrypoint: run the shipped cell function in a Kubernetes pod.

This file travels in the payload Secret next to the pickled function (``payload.pkl``), its
metadata (``meta.json``) and a copy of cloudpickle, and runs as ``torchrun .../entrypoint.py`` (or
``python -u .../entrypoint.py`` for one process). So the image needs Python (the notebook's minor
version) and torch, nothing of ptjupyter. It must stay standard-library only.

Result: rank 0 prints its return value, cloudpickled and base64-encoded, as marked lines
``##ptjupyter-result <nonce> <i>/<n> <chunk>`` that the follower strips from the log and decodes.
"""
import base64
import hashlib
import json
import os
import sys
import traceback

FORMAT = 1
MARK = "##ptjupyter-result"
CHUNK = 4096  # characters of base64 per marked line (container runtimes split lines at 16 KiB)
RESULT_LIMIT = 64 * 1024  # bytes of pickled return value that come back through the log


def _fail(msg, code=3):
    sys.stderr.write("[ptjupyter] " + msg + "\n")
    sys.stderr.flush()
    sys.exit(code)


def load(directory):
    """Check meta.json (format, Python version, checksum) before unpickling; return the function."""
    try:
        with open(os.path.join(directory, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        _fail("cannot read the payload metadata %s/meta.json: %s" % (directory, e))
    if meta.get("format") != FORMAT:
        _fail("payload format %r is not readable by this entrypoint (format %d); resubmit the cell with this "
              "version of ptjupyter" % (meta.get("format"), FORMAT))
    here = "%d.%d" % sys.version_info[:2]
    there = ".".join(str(meta.get("python", "?")).split(".")[:2])
    if here != there:
        _fail("the cell was pickled by Python %s but this image runs Python %s (%s); pickled functions only load "
              "in the same Python minor version: use an image with Python %s"
              % (meta.get("python"), sys.version.split()[0], sys.executable, there))
    with open(os.path.join(directory, "payload.pkl"), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        _fail("payload.pkl does not match its checksum in meta.json (truncated or altered Secret)")
    lib = os.path.join(directory, "lib")
    if os.path.isdir(lib):
        sys.path.insert(0, lib)  # the exact cloudpickle that pickled the cell
    import cloudpickle

    if cloudpickle.__version__ != meta.get("cloudpickle"):
        sys.stderr.write("[ptjupyter] warning: cell pickled with cloudpickle %s, loading with %s\n"
                         % (meta.get("cloudpickle"), cloudpickle.__version__))
    return cloudpickle.loads(data), meta, cloudpickle


class _Prefixed:
    """Prefix each line of a text stream with ``[rankN] `` (several processes share one pod log)."""

    def __init__(self, stream, prefix):
        self._s, self._p, self._bol = stream, prefix, True

    def write(self, text):
        out = []
        for piece in text.splitlines(True):
            if self._bol:
                out.append(self._p)
            out.append(piece)
            self._bol = piece.endswith("\n")
        self._s.write("".join(out))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._s, name)


def emit_result(value, nonce, cloudpickle):
    try:
        data = cloudpickle.dumps(value)
    except Exception as e:  # noqa: BLE001 - report, do not fail the run
        print("%s %s error cannot pickle the return value: %s" % (MARK, nonce, str(e).splitlines()[0][:200]), flush=True)
        return
    if len(data) > RESULT_LIMIT:
        print("%s %s too-large %d" % (MARK, nonce, len(data)), flush=True)
        return
    text = base64.b64encode(data).decode()
    chunks = [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)] or [""]
    out = sys.__stdout__
    for i, c in enumerate(chunks):
        out.write("%s %s %d/%d %s\n" % (MARK, nonce, i + 1, len(chunks), c))
    out.flush()


def main():
    directory = os.environ.get("PTJUPYTER_PAYLOAD") or os.path.dirname(os.path.abspath(__file__))
    fn, meta, cloudpickle = load(directory)
    rank = int(os.environ.get("RANK", "0"))
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        sys.stdout = _Prefixed(sys.stdout, "[rank%d] " % rank)
        sys.stderr = _Prefixed(sys.stderr, "[rank%d] " % rank)
    try:
        value = fn()
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - the traceback is the message
        sys.stdout.flush()
        sys.stderr.write("[ptjupyter] rank %d failed:\n" % rank)
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    sys.stdout.flush()
    if rank == 0:
        emit_result(value, meta.get("nonce", ""), cloudpickle)


if __name__ == "__main__":
    main()
