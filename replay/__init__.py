"""replay: how would this workload's page faults fare under another mmap/VMA locking
design, on another machine?  Trace -> events (ingest/) -> ops -> simulated replay."""

from .jit import use_user_cache

use_user_cache()  # before anything imports numba

__version__ = "0.1.0"
