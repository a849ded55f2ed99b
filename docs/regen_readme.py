"""Re-run README.md's example outputs and rewrite them in place.

The main job's output (the first fenced block under *Two commands* that starts with
``run ``) and every fenced block whose first line is ``$ replay ...`` are produced by
running those commands, in README order, in a fresh directory with a fresh workspace
(``replay-data``, as the README's commands assume), after the set-up the README's text
describes: the main job (``replay run --model v8``), ``replay run --model pervma`` and
``replay synth pft --threads 56 --pages 1000``, with ``tests/data/perf_trace.txt`` copied
to ``pt.txt``.  Run ids change with the engine's semantics: the ids of the set-up runs
are mapped from the old README's to the new ones everywhere in the file (text
included) before the commands that name them run.  Each block is rendered as on a
terminal as wide as the block was (tables drawn as the terminal draws them, styles
dropped), stderr (warnings, notes) where it came, progress bars and the first-use
compile notes left out.

    python docs/regen_readme.py [--dry-run]    # then review `git diff README.md`

The plots and the generated sections (docs/pft_study.py's, `replay validate --doc`) have
their own commands; this touches only the blocks above.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RUN_ID = re.compile(r"^run ([0-9a-f]{12}):")
PROGRESS = re.compile(r"^[^┏┡┃│└┗┣╇]*[━╸╺]|-:--:--\s*$|\d:\d\d:\d\d\s*$")  # a progress bar's frames (not a table's rules)


def _replay() -> str:
    exe = Path(sys.executable).with_name("replay")
    return str(exe) if exe.exists() else "replay"


def _clean(text: str) -> list[str]:
    """Lines as the terminal leaves them (the last of each carriage return, no styles),
    blank lines inside kept, at the ends dropped."""
    out = [ANSI.sub("", ln.split("\r")[-1]).rstrip() for ln in text.split("\n")]
    while out and not out[0]:
        out.pop(0)
    while out and not out[-1]:
        out.pop()
    return out


def run(cmd: str, cwd: Path, width: int) -> list[str]:
    """``cmd`` (a shell line starting with ``replay``) as a terminal ``width`` wide shows it."""
    env = dict(os.environ, COLUMNS=str(width), FORCE_COLOR="1", NO_COLOR="1", PYTHONHASHSEED="0")
    env.pop("REPLAY_WORKSPACE", None)
    line = re.sub(r"^replay\b", _replay(), cmd)
    # stderr into the same pipe, so warnings and notes stand where the terminal shows them
    p = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    if p.returncode not in (0, 1):
        raise SystemExit(f"regen_readme: `{cmd}` exited {p.returncode}: {p.stdout.strip()[-400:]}")
    return _clean("\n".join(x for x in _clean(p.stdout) if not PROGRESS.search(x) and not x.startswith("replay: compiling")))


def blocks(lines: list[str]):
    """(start, end) line indices of each fenced block's body (between its fences)."""
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            yield i + 1, j
            i = j + 1
        else:
            i += 1


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    text = README.read_text()
    lines = text.split("\n")
    work = Path(tempfile.mkdtemp(prefix="regen-readme-"))
    shutil.copy(REPO / "tests" / "data" / "perf_trace.txt", work / "pt.txt")
    ids: dict[str, str] = {}
    two = next(i for i, ln in enumerate(lines) if ln.startswith("## Two commands"))
    main_block = next((s, e) for s, e in blocks(lines) if s > two and lines[s].startswith("run "))

    def width(s, e):
        return max(80, max(len(x) for x in lines[s:e]))

    def setup(cmd, old_id_at=None):
        out = run(cmd, work, 80)
        m = next((m for m in map(RUN_ID.match, out) if m), None)
        if old_id_at is not None and m:
            ids[old_id_at] = m.group(1)
        return out

    s, e = main_block
    old_main = RUN_ID.match(lines[s]).group(1)
    new_main = setup("replay run --model v8", old_main)
    lines[s:e] = new_main[next(i for i, x in enumerate(new_main) if RUN_ID.match(x)):]  # the summary, not ingest's notes
    old_pervma = re.search(r"After `replay run --model pervma`\s*\(run `([0-9a-f]{12})`", "\n".join(lines))
    setup("replay run --model pervma", old_pervma.group(1) if old_pervma else None)
    setup("replay synth pft --threads 56 --pages 1000")
    print(f"regen_readme: run ids {ids}", file=sys.stderr)

    def remap(x: str) -> str:
        for o, n in ids.items():
            x = x.replace(o, n)
        return x

    out_lines: list[str] = []
    pos = 0
    for s, e in blocks(lines):
        if not lines[s].startswith("$ replay"):
            continue
        out_lines += lines[pos:s]
        body = [remap(x) for x in lines[s:e]]
        w = width(s, e)
        new: list[str] = []
        for ln in body:  # a block may show several commands, each followed by its output
            if ln.startswith("$ "):
                new.append(ln)
                print(f"regen_readme: {ln}", file=sys.stderr)
                new += run(ln[2:], work, w)
        out_lines += new
        pos = e
    out_lines += lines[pos:]
    result = remap("\n".join(out_lines))
    shutil.rmtree(work, ignore_errors=True)
    if dry:
        sys.stdout.write(result)
    else:
        tmp = README.with_suffix(".md.tmp")
        tmp.write_text(result)
        os.replace(tmp, README)
        print("regen_readme: rewrote README.md; review `git diff README.md`", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
