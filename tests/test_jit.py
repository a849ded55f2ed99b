"""numba's cache lives in the user's cache directory, and a cold compile is announced."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from replay.jit import COMPILED_SOURCES, sources_digest

ROOT = Path(__file__).resolve().parent.parent


def _py(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_numba_cache_goes_to_xdg_cache_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    r = _py("import replay.ingest, numba; print(numba.config.CACHE_DIR)", env)  # ingest alone, as bench scripts import it
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "xdg" / "replay" / "numba" / sources_digest())
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")  # a user's own setting wins
    r = _py("import replay, numba; print(numba.config.CACHE_DIR)", env)
    assert r.stdout.strip() == str(tmp_path / "mine")


def test_a_cold_compile_is_announced_once_and_cached_outside_the_source(tmp_path):
    mod = tmp_path / "src" / "toy_jit.py"
    mod.parent.mkdir()
    mod.write_text("from numba import njit\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = f"{mod.parent}{os.pathsep}{ROOT}"
    code = """
        import replay
        from replay.jit import notice_compile
        import toy_jit
        notice_compile(toy_jit.twice, "the toy", "1")
        notice_compile(toy_jit.twice, "the toy", "1")
        print(toy_jit.twice(21))
    """
    first = _py(code, env)
    assert first.returncode == 0 and first.stdout.strip() == "42", first.stderr
    assert first.stderr.count("replay: compiling the toy") == 1
    second = _py(code, env)
    assert second.returncode == 0 and "compiling" not in second.stderr  # loaded from the cache
    assert not list(mod.parent.rglob("*.nbi"))  # nothing beside the source
    assert list((tmp_path / "xdg" / "replay" / "numba").rglob("*.nbi"))


def test_the_cache_directory_follows_every_compiled_source(tmp_path):
    # numba would keep a cached loop.run_chunk after an edit of rwsem.py (it checks only
    # loop.py's stamp): any change to any compiled source must name another directory
    import shutil

    for d in COMPILED_SOURCES:
        if (ROOT / d).is_file():
            (tmp_path / d).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / d, tmp_path / d)
        else:
            shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    here = sources_digest(str(tmp_path))
    assert here == sources_digest(str(ROOT))
    rwsem = tmp_path / "replay" / "engine" / "rwsem.py"
    src = rwsem.read_text()
    rwsem.write_text(src.replace("MAX_READERS_WAKEUP = 0x100", "MAX_READERS_WAKEUP = 0x1000"))
    assert sources_digest(str(tmp_path)) != here
    rwsem.write_text(src)
    assert sources_digest(str(tmp_path)) == here
    (tmp_path / "ingest" / "new_scanner.py").write_text("")
    assert sources_digest(str(tmp_path)) != here
    # a constant the compiled op builder bakes in from replay/ops.py
    ops = tmp_path / "replay" / "ops.py"
    before = sources_digest(str(tmp_path))
    ops.write_text(ops.read_text().replace("PAGE = 4096", "PAGE = 8192"))
    assert sources_digest(str(tmp_path)) != before


def test_numba_imported_first_still_caches_in_the_user_cache(tmp_path):
    # a script or notebook that imports numba before replay: numba has read its
    # environment already, so replay.jit sets config.CACHE_DIR itself
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", "import numba; import replay; from numba.core import config; "
                          "print(config.CACHE_DIR)"], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().startswith(str(tmp_path / "replay" / "numba")), out


def test_internal_functions_compile_once_per_argument_type_and_stay_callable(tmp_path):
    # replay.jit.internal: a constant argument from compiled code is typed by its type
    # (numba alone compiles a copy per literal value), the caller gets the helper inlined
    # by LLVM, and Python can still call it (through a plain twin: the tests step the
    # engine by hand)
    mod = tmp_path / "src" / "toy_internal.py"
    mod.parent.mkdir()
    mod.write_text(textwrap.dedent("""
        from numba import njit
        from replay.jit import internal

        K = 7

        @internal(inline=True)
        def helper(a, b):
            return a * 2 + b

        @internal
        def mid(a, flag):
            return helper(a, 1) + helper(a, K) if flag else -1

        @njit(cache=True)
        def top(a):
            return mid(a, True) + helper(a, 3) + mid(a, False)
    """))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = f"{mod.parent}{os.pathsep}{ROOT}"
    code = """
        import replay, toy_internal as m
        print(m.top(5))
        print(len(m.helper.signatures), len(m.mid.signatures))
        ir = next(iter(m.top.inspect_llvm().values()))
        print(sum("call" in l and "helper" in l for l in ir.splitlines()))
        # inline=True is LLVM's alwaysinline on the helper (O3 would inline one this small anyway)
        print("alwaysinline" in next(iter(m.helper.inspect_llvm().values())),
              "alwaysinline" in next(iter(m.mid.inspect_llvm().values())))
        print(m.helper(5, 1), m.mid(5, True))
    """
    r = _py(code, env)
    assert r.returncode == 0, r.stderr
    total, sigs, calls, forced, direct = r.stdout.strip().splitlines()
    assert total == "40"  # (11 + 17) + 13 - 1
    assert sigs == "1 1"  # helper once for int64 (not for the literals 1, 7, 3); mid once for bool
    assert calls == "0"  # inlined into top: no call of helper left
    assert forced == "True False"
    assert direct == "11 28"
