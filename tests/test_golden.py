"""Golden summaries: every sample trace under every model, reduced to the aggregates
of every result column, lock and line statistic (tests/golden/make.py says which), must
equal the committed tests/golden/<trace>.json exactly.  These pin the semantics on
their own, without a second engine to compare with.  Regenerate with
``python tests/golden/make.py`` or ``pytest tests/test_golden.py --update-golden``."""

import json

import pytest

from golden import make

REGENERATE = "python tests/golden/make.py (or pytest tests/test_golden.py --update-golden)"


def _load(trace: str) -> dict:
    p = make.golden_path(trace)
    if not p.exists():
        pytest.fail(f"no golden file {p.name}: make it with {REGENERATE}")
    return json.loads(p.read_text())


def _diff(want, got, path=""):
    """The first few places two summaries differ, as 'path: want -> got'."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got), key=str):
            out += _diff(want.get(k, "<absent>"), got.get(k, "<absent>"), f"{path}.{k}" if path else str(k))
        return out
    return [] if want == got else [f"{path}: {want!r} -> {got!r}"]


def _check_header(golden: dict, trace: str) -> None:
    want = make.header(trace)
    if golden.get("semantics") != want["semantics"]:
        pytest.fail(f"{make.golden_path(trace).name} was made with engine semantics {golden.get('semantics')}, "
                    f"the engine is at REFERENCE_VERSION {want['semantics']}: if the change is intended, "
                    f"regenerate with {REGENERATE} and review the diff")
    setup = {k: golden.get(k) for k in want}
    assert setup == want, f"golden file made on another setup: {setup} (regenerate with {REGENERATE})"


@pytest.mark.parametrize("model", make.MODELS)
def test_golden_summary(sample_ops, model, request):
    trace = sample_ops["trace_id"][0]
    got = make.summarize(make.replay_one(sample_ops, model))
    if request.config.getoption("--update-golden"):
        p = make.golden_path(trace)
        old = json.loads(p.read_text()) if p.exists() else {}
        runs = old.get("runs", {}) if old.get("semantics") == make.header(trace)["semantics"] else {}
        make.write(trace, {**make.header(trace), "runs": {**runs, model: got}})
        return
    golden = _load(trace)
    _check_header(golden, trace)
    want = golden["runs"].get(model)
    assert want is not None, f"{trace}.json has no run for {model}: regenerate with {REGENERATE}"
    got = json.loads(json.dumps(got))  # as the file holds it (tuples -> lists, keys -> strings)
    diffs = _diff(want, got)
    assert not diffs, f"{trace} under {model} differs from its golden summary ({len(diffs)} values):\n  " + \
        "\n  ".join(diffs[:25])


def test_a_semantics_bump_asks_for_regeneration(monkeypatch):
    from replay import engine

    golden = _load(make.TRACES[0])
    monkeypatch.setattr(engine, "REFERENCE_VERSION", golden["semantics"] + 1)
    with pytest.raises(pytest.fail.Exception, match=r"made with engine semantics .* regenerate with python tests/golden/make.py"):
        _check_header(golden, make.TRACES[0])
