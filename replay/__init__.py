"""replay: how would this workload's page faults fare under another mmap/VMA locking
design, on another machine?  Trace -> events (ingest/) -> ops -> simulated replay.

``import replay`` is the Python API (``replay/api.py``): ``replay.ingest``, ``replay.ops``,
``replay.run``, ``replay.compare``, ``replay.sql``, ``replay.query``, ...  Three of those
names are also modules of this package (``replay.ingest`` the ingesters, ``replay.ops``
the op builder, ``replay.compare`` mmtests' statistics); as attributes of the package
they stay the API's functions, and the modules are imported by their full names
(``from replay.ops import build_ops``).
"""

import sys
import types

from .jit import use_user_cache

use_user_cache()  # before anything imports numba

__version__ = "0.1.0"

from .api import (  # noqa: E402
    Comparison, Ingested, Ops, ReplayError, Run, UsageError, compare, ingest, load_run, models, ops, query, run, runs,
    sql, traces,
)

_API = {"ingest": ingest, "ops": ops, "compare": compare}


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package; for the three names
    the API shares with modules, keep the function."""

    def __setattr__(self, name, value):
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
for _name, _fn in _API.items():  # a submodule imported above (api imports none) cannot have taken the name
    setattr(sys.modules[__name__], _name, _fn)

__all__ = ["ingest", "ops", "run", "compare", "sql", "query", "traces", "runs", "models", "load_run", "Run",
           "Ingested", "Ops", "Comparison", "ReplayError", "UsageError", "__version__"]
