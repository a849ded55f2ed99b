"""Trace ingesters: perf script / ftrace / trace-cmd text, perf JSON and perf.data in;
typed Parquet (the events dataset) out.  Knows nothing of lock models."""

from replay.jit import use_user_cache

use_user_cache()  # numba's cache in the user's cache directory, set before scan.py imports numba
