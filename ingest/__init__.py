"""Trace ingesters: perf script / ftrace / trace-cmd text, perf JSON and perf.data in;
typed Parquet (the events dataset) out.  Knows nothing of lock models."""
