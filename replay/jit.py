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


def internal(fn=None, *, inline: bool = False):
    """Decorator for a compiled function that only compiled code calls (the engine's
    steps, the scanners' and the op builder's helpers).  Against a plain
    ``@njit(cache=True)`` it saves compile time three ways, and runs the same code:

    - no Python or C entry wrapper is built for it (``no_cpython_wrapper``,
      ``no_cfunc_wrapper``): numba lowers and optimises both for every ``@njit``
      function, about a tenth of the engine's cold compile, for functions Python never
      calls;
    - it is compiled once per argument *type*: numba types a constant argument
      (``rwsem_mark_wake(S, k, RWSEM_WAKE_ANY, now)``) as a literal and compiles a copy
      of the callee per constant value (the engine had six of ``waits.record``); LLVM
      still propagates the constant into an inlined call;
    - ``inline=True`` asks LLVM to inline it everywhere (``forceinline``: the
      ``alwaysinline`` attribute).  numba's own ``inline="always"`` splices a copy of
      the function's IR into each caller and types it again there, so a helper called
      from fifteen places was typed fifteen times; this types and lowers it once and
      the machine code comes out as inlined as before.  (``inline=False`` is set
      explicitly too: numba passes ``forceinline`` down to callees compiled inside a
      force-inlined function unless they say otherwise.)

    cache=True as for the rest: a later compile of another entry point (``run_events``
    in the tests) links these from the cache instead of compiling them again.  Under
    ``NUMBA_DISABLE_JIT=1`` the function is returned as it is.
    """
    from numba.core import config

    def wrap(f):
        if config.DISABLE_JIT:
            return f
        d = sys.modules[__name__].InternalDispatcher(py_func=f, locals={}, targetoptions={
            "nopython": True, "no_cpython_wrapper": True, "no_cfunc_wrapper": True, "forceinline": inline})
        d.enable_caching()
        return d

    return wrap(fn) if fn is not None else wrap


def __getattr__(name):
    # InternalDispatcher subclasses numba's dispatcher, so it is made on first use: this
    # module is imported before numba, to point numba's cache (use_user_cache).  Being an
    # attribute of the module, it pickles by name like any class.
    if name != "InternalDispatcher":
        raise AttributeError(name)
    from numba.core import types
    from numba.core.registry import CPUDispatcher

    class InternalDispatcher(CPUDispatcher):
        """A CPU dispatcher whose callers' constant arguments are typed by their type,
        not their value (numba.core.dispatcher.Dispatcher.get_call_template compiles for
        the argument types it is given, literals included)."""

        def get_call_template(self, args, kws):
            return super().get_call_template(tuple(types.unliteral(a) for a in args),
                                             {k: types.unliteral(v) for k, v in kws.items()})

        def __call__(self, *args, **kws):
            # A call from Python (the tests drive single steps by hand) needs the entry
            # wrapper this one lacks: it goes through a plain @njit twin of the same
            # source, compiled in this process (uncached: its cache entries would be
            # this dispatcher's file names and keys).
            twin = self.__dict__.get("_twin")
            if twin is None:
                from numba import njit

                twin = self.__dict__["_twin"] = njit(self.py_func)
            return twin(*args, **kws)

    InternalDispatcher.__module__ = __name__
    globals()["InternalDispatcher"] = InternalDispatcher
    return InternalDispatcher
