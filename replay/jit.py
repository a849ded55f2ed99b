"""numba in this project: where its cache lives, and a word when something compiles.

numba caches compiled functions beside their source (``__pycache__``) unless
``NUMBA_CACHE_DIR`` says otherwise; a source tree is no place for a per-user,
per-machine artefact (and may be read-only), so ``use_user_cache()`` points numba at
``$XDG_CACHE_HOME/replay/numba`` (``~/.cache/replay/numba``) unless the user set
``NUMBA_CACHE_DIR`` already.  It must run before numba is first imported:
``replay/__init__.py`` and ``ingest/__init__.py`` call it.  (numba mirrors each
source's full path under that directory, so two checkouts do not share entries.)

numba checks a cached function against the stamp of its own source file only ("changes
in other files are not detected", numba's caching notes), so a cached
``loop.run_chunk`` would go on running the code it compiled in from ``rwsem.py`` after
``rwsem.py`` changed.  The engine spans several files, so the cache directory is one per
version of the compiled sources: ``$XDG_CACHE_HOME/replay/numba/<sources_digest()>``.
A ``NUMBA_CACHE_DIR`` of the user's own is used as it is.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading

PACKAGES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every module numba compiles, and the modules whose constants compiled code bakes in
# (the op builder's step reads replay/ops.py's OP_KINDS, PAGE, ...): directories or files
COMPILED_SOURCES = ("replay/engine", "ingest", "replay/opstream.py", "replay/ops.py")


def sources_digest(root: str = PACKAGES) -> str:
    """A digest of the Python files numba compiles (COMPILED_SOURCES under root)."""
    h = hashlib.sha256()
    for d in COMPILED_SOURCES:
        p = os.path.join(root, d)
        if os.path.isfile(p):
            files = [(d, p)]
        else:
            files = [(f"{d}/{n}", os.path.join(p, n)) for n in sorted(os.listdir(p)) if n.endswith(".py")] \
                if os.path.isdir(p) else []
        for name, path in files:
            h.update(f"{name}\0".encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def user_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "replay", "numba", sources_digest())


def use_user_cache() -> None:
    os.environ.setdefault("NUMBA_CACHE_DIR", user_cache_dir())
    # numba reads NUMBA_CACHE_DIR once, when it is first imported; a caller that imported
    # numba before replay (a notebook, a script that imports numba first) would
    # otherwise cache beside the sources.  Cache locators read config.CACHE_DIR when each
    # @njit(cache=True) function is defined, so setting it here is in time for ours.
    cfg = sys.modules.get("numba.core.config")
    if cfg is not None and not getattr(cfg, "CACHE_DIR", ""):
        cfg.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


def is_cached(dispatcher) -> bool:
    """True when numba's on-disk cache holds ``dispatcher`` compiled for its current
    source (or it is compiled in this process already)."""
    if getattr(dispatcher, "signatures", None):
        return True
    try:
        return bool(dispatcher._cache._cache_file._load_index())  # an internal API
    except Exception:  # noqa: BLE001 - if it moved, say cold: the worst is one extra notice
        return False


_said: set[str] = set()
_lock = threading.Lock()


def notice_compile(dispatcher, what: str, seconds: str) -> None:
    """Say once per process, on stderr, that ``what`` is about to compile (a fresh
    install's first use) - so a pause of several seconds is not silence."""
    if is_cached(dispatcher):
        return
    with _lock:
        if what in _said:
            return
        _said.add(what)
    print(f"replay: compiling {what} (first use only, ~{seconds} s; cached in {os.environ.get('NUMBA_CACHE_DIR')})",
          file=sys.stderr, flush=True)
