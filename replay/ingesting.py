"""`replay ingest`: source -> staging directory -> workspace, atomically (workspace.py says how)."""

from __future__ import annotations

import os
from pathlib import Path

from .ingest.pipeline import IngestResult, ingest_to
from .ingest.sources import InputError, open_source

from . import __version__
from .workspace import Workspace, check_name, fault_point, writing


def default_name(path: str) -> str:
    if path == "-":
        return "stdin"
    base = os.path.basename(path.rstrip("/"))
    for ext in (".gz", ".zst", ".txt", ".data", ".json", ".trace", ".dat"):
        if base.endswith(ext) and len(base) > len(ext):
            base = base[: -len(ext)]
    return "".join(ch if ch.isalnum() or ch in "._-+" else "_" for ch in base).lstrip(".") or "trace"


def claim_name(ws: Workspace, name: str, replace: bool) -> None:
    """A valid trace name, free in the workspace unless --replace."""
    try:
        check_name(name)
    except ValueError as e:
        raise InputError(str(e)) from None
    if ws.has_trace(name) and not replace:
        raise InputError(f"trace {name!r} is already in {ws.root}; pass --replace to replace it, or choose another name")


def run_ingest(path: str, name: str | None, fmt: str, workspace: str | Path | None, strict: bool,
               replace: bool, maps_snapshot: str | None = None, source_label: str | None = None,
               extra_meta: dict | None = None) -> IngestResult:
    """Parse into a staging directory (no lock held: this is the slow part), then
    commit under the workspace lock, claiming the name again there: another ingest
    may have taken it meanwhile, and exactly one of the two wins."""
    from .cli import _progress

    ws = Workspace(workspace)
    name = name or default_name(path)
    claim_name(ws, name, replace)  # fail before the work when we can
    src = open_source(path, fmt)
    with ws.staging() as stage:
        with writing(ws.root):
            prog, update = _progress(src.size, f"ingest {name}")
            with prog:
                res = ingest_to(src, stage, name, strict=strict, explicit_format=fmt != "auto", progress=update)
            if source_label:
                res.source = source_label
            for k, v in (extra_meta or {}).items():
                res.meta.setdefault(k, v)
            ws.stage_table(res.traces_row(__version__, maps_snapshot), stage, "traces")
        fault_point("ingest.staged")
        with ws.lock():
            claim_name(ws, name, replace)
            ws.commit_trace(name, stage)
    res.where = ws.partition("events", name)
    return res
