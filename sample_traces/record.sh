#!/usr/bin/env bash
# Re-record the bundled sample traces (needs root, perf, gcc, a JDK and zstd).
# Each trace is kept as the text `perf script` (or tracefs) printed, zstd-compressed,
# with the /proc/PID/maps snapshot taken at exec beside it.  Run from the repo root:
#   bash sample_traces/record.sh
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -Wall -pthread -o "$work/pft" programs/pft.c
gcc -O2 -Wall -pthread -o "$work/mprotect_race" programs/mprotect_race.c
javac -d "$work" programs/Alloc.java
ws="$work/ws"
# per-type field lists, as replay ingest perf.data prints them (ingest/sources.py
# PERF_SCRIPT_ARGS): the minor-/major-faults software events replay record adds to time
# each fault have no tracepoint fields, and a plain -F list naming `trace` prints nothing
# for them
PERF_FIELDS="--ns -F trace:comm,pid,tid,cpu,time,event,trace -F sw:comm,pid,tid,cpu,time,period,event,addr,ip --show-lost-events --header"

perf_trace() {  # NAME CMD...
  local name=$1; shift
  replay record -w "$ws" -o "$name" --keep "$work/$name.perf.data" -- "$@" >/dev/null
  perf script -i "$work/$name.perf.data" $PERF_FIELDS 2>/dev/null | zstd -q -19 -f -o "$name.txt.zst"
  cp "$work/$name.perf.data.maps" "$name.maps"
}

# 1. multi-threaded, fault-heavy: pft-style, 2 threads x 16 MiB x 3 iterations
perf_trace pft-2t "$work/pft" 2 16 3
# 2. two threads fault while a third mprotect-toggles a window of the same mapping
perf_trace mprotect-race "$work/mprotect_race" 2 8 12
# 3. a JVM allocation workload (ParallelGC, 2 allocating threads)
perf_trace jvm-alloc java -cp "$work" -Xms16m -Xmx128m -XX:+UseParallelGC -XX:ParallelGCThreads=2 Alloc 2 48
# 4. ftrace text (tracefs trace_pipe, record-tgid on) of the pft workload
replay record -w "$ws" -o pft-ftrace --ftrace --keep "$work/pft-ftrace.txt" -- "$work/pft" 2 8 2 >/dev/null
zstd -q -19 -f -o pft-ftrace.txt.zst "$work/pft-ftrace.txt"
cp "$work/pft-ftrace.txt.maps" pft-ftrace.maps
ls -la *.zst *.maps
