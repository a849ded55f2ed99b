"""Every data command takes the same -f/-o (one writer), tables fit 80 columns on a
terminal and are plain text when piped, help shows choices and ends with an example."""

import json

import polars as pl
import pytest
from rich.console import Console

from conftest import SAMPLES
from replay.output import plain_table, print_table

FORMATS = ("csv", "json", "ndjson", "parquet")


@pytest.fixture(scope="module")
def wsr(tmp_path_factory):
    """pft-ftrace ingested and replayed under mmap_lock and v8 on the 2-vCPU profile."""
    from replay.cli import main

    ws = tmp_path_factory.mktemp("out") / "ws"
    assert main(["ingest", str(SAMPLES / "pft-ftrace.txt.zst"), "-w", str(ws), "--maps",
                 str(SAMPLES / "pft-ftrace.maps"), "-f", "json", "-o", str(ws.parent / "ingest.json")]) == 0
    ids = []
    for m in ("mmap_lock", "v8"):
        dest = ws.parent / f"{m}.json"
        assert main(["run", "--model", m, "--trace", "pft-ftrace", "--machine", "local-2vcpu", "-w", str(ws),
                     "-o", str(dest)]) == 0
        ids.append(json.loads(dest.read_text())["run_id"])
    return ws, ids


def _commands(ws, ids):
    w = ["-w", str(ws)]
    return {
        "traces": ["traces", *w], "runs": ["runs", *w], "models": ["models"], "machines": ["machines"],
        "ops": ["ops", "pft-ftrace", *w], "report": ["report", ids[0], *w], "compare": ["compare", *ids, *w],
        "run": ["run", "--model", "v8", "--trace", "pft-ftrace", "--machine", "local-2vcpu", *w],
        "sql": ["sql", "SELECT run_id, model FROM runs ORDER BY model", *w],
        "query": ["query", "lock_stat", *w], "ingest": ["ingest", str(SAMPLES / "pft-ftrace.txt.zst"), "--name", "again",
                                                        "--replace", *w],
    }


def test_every_data_command_writes_every_format_to_a_file(wsr, cli, tmp_path):
    ws, ids = wsr
    for name, args in _commands(ws, ids).items():
        for fmt in FORMATS:
            dest = tmp_path / f"{name}.{fmt}"
            rc, out, err = cli(*args, "-o", dest)  # the suffix picks the format
            assert rc == 0, (name, fmt, err)
            assert out == "" or name == "ingest" and not out.strip(), (name, out)  # nothing on stdout
            if fmt == "parquet":
                df = pl.read_parquet(dest)
            elif fmt == "csv":
                df = pl.read_csv(dest)
            elif fmt == "ndjson":
                df = pl.read_ndjson(dest)
            else:
                doc = json.loads(dest.read_text())
                df = pl.DataFrame([doc] if isinstance(doc, dict) else doc)
            assert df.height >= 1, (name, fmt)
        rc, out, _ = cli(*args, "-f", "csv")  # -f alone: stdout
        assert rc == 0 and "," in out.splitlines()[0], name


def test_a_single_record_is_a_json_object_and_lists_are_arrays(wsr, cli):
    ws, ids = wsr
    rc, out, _ = cli("run", "--model", "v8", "--trace", "pft-ftrace", "--machine", "local-2vcpu", "-w", ws, "-f", "json")
    assert json.loads(out)["run_id"] == ids[1]
    rc, out, _ = cli("runs", "-w", ws, "-f", "json")
    assert sorted(r["run_id"] for r in json.loads(out)) == sorted(ids)


def test_parquet_to_stdout_needs_dash_and_bad_format_is_usage(wsr, cli):
    ws, _ = wsr
    rc, _, err = cli("runs", "-w", ws, "-f", "parquet")
    assert rc == 2 and "needs -o FILE" in err
    rc, _, err = cli("runs", "-w", ws, "-f", "xml")
    assert rc == 2


def test_piped_tables_are_plain_text_one_row_a_line(wsr, cli):
    ws, ids = wsr
    rc, out, _ = cli("runs", "-w", ws)
    lines = out.splitlines()
    assert rc == 0 and not any(ch in out for ch in "│┃━─")
    assert lines[0].split() == ["run_id", "trace_id", "model", "machine", "cpus", "seed", "placement", "faults",
                                "faults_per_sec", "fallback_pct"]
    assert sorted(ln.split()[0] for ln in lines[1:]) == sorted(ids)


def test_terminal_tables_fit_80_columns_without_cutting_names(wsr):
    ws, ids = wsr
    import replay

    ls = replay.load_run(ids[1], ws).line_stats.sort("transfers", descending=True)
    rows = [{"line": hex(r["line"]), "transfers": r["transfers"], "fields": r["fields"]} for r in ls.to_dicts()]
    con = Console(force_terminal=True, width=80, record=True, color_system=None)
    print_table(con, rows, ["line", "transfers", "fields"], "hottest cache lines")
    text = con.export_text()
    assert max(len(ln) for ln in text.splitlines()) <= 80 and "…" not in text
    flat = "".join(ch for ch in text if ch not in "│┃ \n")
    for r in rows:  # every name whole, folded onto lines of its cell
        assert all(f.replace(" ", "") in flat for f in r["fields"].split(", "))
    locks = [{"lock": "mmap_lock mm", "acquisitions": 1431, "contentions": 905, "wait_total_us": 13194.6,
              "wait_max_us": 421.6, "con_bounces": 1848}]  # replay run's table: its headers need breaking
    con = Console(force_terminal=True, width=80, record=True, color_system=None)
    print_table(con, locks, list(locks[0]))
    text = con.export_text()
    assert max(len(ln) for ln in text.splitlines()) <= 80
    for word in ("acquisitions", "contentions", "mmap_lock", "13,194.6", "1,848", "bounces"):
        assert word in text  # whole: breaks fall between words or after a header's '_'
    plain = plain_table(rows, ["line", "transfers", "fields"])
    assert len(plain) == len(rows) + 1 and plain[1].endswith(rows[0]["fields"])


def test_version_help_choices_and_examples(cli):
    from replay import __version__
    from replay.cli import app
    from replay.machines import builtin_names
    from replay.models import registry

    rc, out, _ = cli("--version")
    assert rc == 0 and out == f"replay {__version__}\n"
    rc, out, _ = cli("run", "--help")
    flat = " ".join(out.replace("│", " ").split())
    for names in (list(registry()), builtin_names(), ["spread", "packed", "as-recorded"]):
        assert ", ".join(names) in flat, names
    import typer.main

    group = typer.main.get_command(app)
    for name in group.commands:
        rc, out, _ = cli(name, "--help")
        tail = " ".join(out.rsplit("╯", 1)[-1].split())  # what follows the last option panel
        assert rc == 0 and tail.startswith("Example: ") and "replay " in tail, (name, tail)


def test_query_builds_missing_ops(cli, tmp_path):
    ws = tmp_path / "ws"
    assert cli("ingest", SAMPLES / "pft-ftrace.txt.zst", "-w", ws, "--maps", SAMPLES / "pft-ftrace.maps")[0] == 0
    assert not (ws / "ops").exists() or not list((ws / "ops").rglob("*.parquet"))
    rc, out, err = cli("query", "observed_fallbacks", "-w", ws, "-f", "json")
    assert rc == 0, err
    assert {r["trace_id"] for r in json.loads(out)} == {"pft-ftrace"} and list((ws / "ops").rglob("*.parquet"))
    rc, _, err = cli("query", "latency", "-w", ws)
    assert rc == 1 and "replay run --model M makes it" in err


def test_lock_stat_query_kernel_names_and_consistency(wsr, cli):
    import replay

    ws, (mm_run, v8_run) = wsr
    mm = replay.query("lock_stat", ws, run_id=mm_run)
    cls = mm.filter(pl.col("section") == "class")
    ls = replay.load_run(mm_run, ws).lock_stats
    # mmap_lock, and the fault path's spinlocks where it ran (as lockdep names them: &zone->lock, ...)
    assert sorted(cls["class_name"].to_list()) == sorted(["&mm->mmap_lock"] + ["&" + c for c in set(ls["lock_class"]) - {"mmap_lock"}])
    for c in cls.iter_rows(named=True):
        mine = ls.filter(pl.col("lock_class") == ("mmap_lock" if c["class_name"] == "&mm->mmap_lock" else c["class_name"][1:]))
        assert c["acquisitions"] == mine["acquisitions"].sum() and c["contentions"] == mine["contentions"].sum()
    v8 = replay.query("lock_stat", ws, run_id=v8_run).filter(pl.col("section") == "class")
    res = replay.load_run(v8_run, ws).results
    vm = v8.filter(pl.col("class_name") == "vm_lock").row(0, named=True)
    assert vm["rw"] == "R" and vm["acquisitions"] == res.filter(
        (pl.col("kind") == "fault") & pl.col("outcome").is_in(["success", "retry"])).height
    assert vm["waittime_total_us"] is None  # not recorded: not invented
    rc, out, _ = cli("query", "lock_stat", "-w", ws, "-p", f"run_id={v8_run}")
    assert rc == 0 and out.startswith("lock_stat version 0.4\n") and "vm_lock-R:" in out and "&mm->mmap_lock:" in out
