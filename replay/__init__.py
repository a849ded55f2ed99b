"""replay: how would this workload's page faults fare under another mmap/VMA locking
design, on another machine?  Trace -> events (ingest/) -> ops -> simulated replay."""

__version__ = "0.1.0"
