"""A model's parameters are typed and checked once, with one set of defaults both
engines read (a plugin that omitted ref_limit used to raise KeyError in one engine and
run with a limit of 0 in the other)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from replay.models import registry
from replay.models.base import LockParams, Model

ROOT = Path(__file__).resolve().parent.parent


def _plugin(tmp_path, params: str) -> dict:
    """An out-of-tree model registered through the replay.models entry-point group: a
    dist-info directory on PYTHONPATH is what pip would have installed."""
    (tmp_path / "myplug.py").write_text(textwrap.dedent(f"""
        from replay.models import Model
        from replay.models.kernels import MODELS
        base = MODELS["v8"]
        MODEL = Model("myplug", "v8 with a twist", ["nowhere"], base.layout, base.fault, base.kernel_fault,
                      base.writer, params={params})
    """))
    di = tmp_path / "myplug-0.1.dist-info"
    di.mkdir()
    (di / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (di / "entry_points.txt").write_text("[replay.models]\nmyplug = myplug:MODEL\n")
    return dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")


@pytest.mark.parametrize("params, message", [
    ('{"vma_lock": "refcnt", "wake": "last"}', "needs ref_limit"),
    ('{"vma_lock": "refcnt", "ref_limit": "big"}', "ref_limit = 'big' has the wrong type"),
    ('{"vma_lock": "refcount", "ref_limit": 10}', "vma_lock must be one of"),
    ('{"vma_lock": "refcnt", "ref_limit": 10, "wakeup": "last"}', "unknown parameter wakeup"),
])
def test_a_plugin_with_a_bad_parameter_gets_one_line(tmp_path, params, message):
    env = _plugin(tmp_path, params)
    for args in (["models"], ["run", "--model", "v8", "-w", str(tmp_path / "ws")]):
        r = subprocess.run([sys.executable, "-m", "replay", *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
        assert r.returncode == 1, r.stderr
        assert r.stderr.count("\n") == 1 and "myplug" in r.stderr and message in r.stderr, r.stderr


def test_a_good_plugin_loads_with_the_defaults(tmp_path):
    env = _plugin(tmp_path, '{"vma_lock": "refcnt", "ref_limit": 1000}')
    r = subprocess.run([sys.executable, "-c", "from replay.models import get_model; p = get_model('myplug').lock; "
                        "print(p.wake, p.writer_ref, p.typesafe_by_rcu)"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["last", "0", "False"]  # LockParams' defaults, the same for both engines


def test_builtin_models_declare_valid_parameters():
    for m in registry().values():
        assert isinstance(m.lock, LockParams)
        assert m.lock == LockParams.parse(m.name, m.params)
    v7, v8 = registry()["v7"].lock, registry()["v8"].lock
    assert (v7.wake, v7.writer_ref, v7.ref_limit + 1) == ("eager", 1, v8.ref_limit)
    with pytest.raises(ValueError, match="unknown parameter"):
        base = registry()["v8"]
        Model("x", "", [], base.layout, base.fault, base.kernel_fault, base.writer, params={"colour": 1})
