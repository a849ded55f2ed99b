"""`replay ingest`: source -> staging directory -> workspace, atomically (workspace.py says how)."""

from __future__ import annotations

import os
from pathlib import Path

from .ingest.pipeline import IngestResult, ingest_to
from .ingest.sources import InputError, open_source

from . import __version__
from .workspace import Workspace, check_name, fault_point, writing


COMPRESSION_SUFFIXES = (".gz", ".zst")
FORMAT_SUFFIXES = (".txt", ".data", ".dat", ".json", ".trace")


def default_name(path: str) -> str:
    """The file name less one compression suffix and then one format suffix:
    ``x.txt.zst`` -> ``x``, ``x.json`` -> ``x``, ``perf.data`` -> ``perf``,
    ``x.data.txt`` -> ``x.data``; characters a name cannot hold become ``_``."""
    if path == "-":
        return "stdin"
    base = os.path.basename(path.rstrip("/"))
    for group in (COMPRESSION_SUFFIXES, FORMAT_SUFFIXES):
        for ext in group:
            if base.endswith(ext) and len(base) > len(ext):
                base = base[: -len(ext)]
                break
    return "".join(ch if ch.isalnum() or ch in "._-+" else "_" for ch in base).lstrip(".") or "trace"


def claim_name(ws: Workspace, name: str, replace: bool, path: str | None = None) -> None:
    """A valid trace name, free in the workspace unless --replace.  ``path``: the input
    whose file name gave the name (no --name), for the message when another file had it."""
    try:
        check_name(name)
    except ValueError as e:
        raise InputError(str(e)) from None
    if ws.has_trace(name) and not replace:
        if path is not None:
            try:
                had = ws.read("traces", name).column("source")[0].as_py()
            except Exception:  # replaced meanwhile, or an old row: the plain message will do
                had = None
            if had and os.path.abspath(had) != os.path.abspath(path):
                raise InputError(
                    f"trace {name!r} is already in {ws.root}, ingested from {had}; {path} gets the same default name "
                    f"(its file name less {'/'.join(COMPRESSION_SUFFIXES)} and one of {'/'.join(FORMAT_SUFFIXES)}): "
                    f"pass --name NAME to ingest it as another trace, or --replace to replace {name!r}")
        raise InputError(f"trace {name!r} is already in {ws.root}; pass --replace to replace it, or --name to "
                         "choose another name")


def run_ingest(path: str, name: str | None, fmt: str, workspace: str | Path | None, strict: bool,
               replace: bool, maps_snapshot: str | None = None, source_label: str | None = None,
               extra_meta: dict | None = None, arch: str | None = None) -> IngestResult:
    """Parse into a staging directory (no lock held: this is the slow part), then
    commit under the workspace lock, claiming the name again there: another ingest
    may have taken it meanwhile, and exactly one of the two wins."""
    from .cli import _progress

    ws = Workspace(workspace)
    derived = None if name or path == "-" else path
    name = name or default_name(path)
    claim_name(ws, name, replace, derived)  # fail before the work when we can
    src = open_source(path, fmt)
    with ws.staging() as stage:
        with writing(ws.root):
            prog, update = _progress(src.size, f"ingest {name}")
            with prog:
                res = ingest_to(src, stage, name, strict=strict, explicit_format=fmt != "auto", progress=update,
                                arch=arch)
            if source_label:
                res.source = source_label
            for k, v in (extra_meta or {}).items():
                res.meta.setdefault(k, v)
            ws.stage_table(res.traces_row(__version__, maps_snapshot), stage, "traces")
        fault_point("ingest.staged")
        with ws.lock():
            claim_name(ws, name, replace, derived)
            ws.commit_trace(name, stage)
    res.where = ws.partition("events", name)
    return res
