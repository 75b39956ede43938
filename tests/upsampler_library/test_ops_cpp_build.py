"""Build machinery of the C++ backend: cache, lock, timeouts, failures.

Most tests drive ``cpp.build`` with a stand-in compiler (a small Python script) so that they take
milliseconds; one test compiles the real source into a fresh folder and loads it in a subprocess.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from upsamplers.ops.sample_attention import cpp

FAKE_COMPILER = textwrap.dedent("""
    import os, sys, time
    args = sys.argv[1:]
    mode = os.environ.get("FAKE_CXX_MODE", "ok")
    with open(os.environ["FAKE_CXX_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    if mode == "sleep":
        time.sleep(float(os.environ.get("FAKE_CXX_SLEEP", "60")))
    if mode == "fail":
        print("sample_attention.cpp:1:1: error: something is wrong")
        sys.exit(1)
    with open(args[args.index("-o") + 1], "wb") as out:
        out.write(b"not really a library")
""")

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from upsamplers.ops.sample_attention import cpp
    with cpp.build_lock(Path(sys.argv[1]), timeout=5):
        print("locked", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_cxx.py"
    script.write_text(FAKE_COMPILER)
    log = tmp_path / "invocations.log"
    log.write_text("")
    monkeypatch.setenv("FAKE_CXX_LOG", str(log))
    monkeypatch.setenv("FAKE_CXX_MODE", "ok")

    class Fake:
        compiler = [sys.executable, str(script)]
        root = tmp_path / "cache"

        @staticmethod
        def calls() -> list[int]:
            return [int(line) for line in log.read_text().split()]

    return Fake


def hold_lock(folder) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"locked"
    return proc


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv(cpp.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cpp.cache_root() == tmp_path / "lda-bench" / "extensions"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cpp.cache_root() == cpp.Path(os.path.expanduser("~")) / ".cache" / "lda-bench" / "extensions"
    monkeypatch.setenv(cpp.ENV_CACHE_DIR, str(tmp_path / "x"))
    assert cpp.cache_root() == tmp_path / "x"
    # The folder name depends on the compiler command (and sources, torch, flags).
    assert cpp.build_dir(tmp_path, ["g++"]) != cpp.build_dir(tmp_path, ["clang++"])
    assert cpp.build_dir(tmp_path, ["g++"]) == cpp.build_dir(tmp_path, ["g++"])


def test_builds_once_and_reuses_the_cache(fake):
    lib = cpp.build(fake.root, fake.compiler, timeout=30)
    assert lib.read_bytes() == b"not really a library"
    assert cpp.build(fake.root, fake.compiler, timeout=30) == lib
    assert len(fake.calls()) == 1
    assert not [p for p in lib.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_concurrent_builds_compile_once(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CXX_MODE", "sleep")
    monkeypatch.setenv("FAKE_CXX_SLEEP", "1")
    code = "import sys; from pathlib import Path; from upsamplers.ops.sample_attention import cpp; " \
           "print(cpp.build(Path(sys.argv[1]), sys.argv[2:], timeout=30))"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    procs = [subprocess.Popen([sys.executable, "-c", code, str(fake.root), *fake.compiler], stdout=subprocess.PIPE,
                              env=env) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert len(fake.calls()) == 1


def test_lock_of_a_killed_build_is_not_stale(fake):
    folder = cpp.build_dir(fake.root, fake.compiler)
    holder = hold_lock(folder)
    holder.send_signal(signal.SIGKILL)  # a build killed midway, lock file left behind
    holder.wait()
    info = json.loads((folder / "build.lock").read_text())
    assert info["pid"] == holder.pid
    started = time.monotonic()
    assert cpp.build(fake.root, fake.compiler, timeout=30).exists()
    assert time.monotonic() - started < 5


def test_leftovers_of_a_dead_build(fake):
    folder = cpp.build_dir(fake.root, fake.compiler)
    folder.mkdir(parents=True)
    (folder / "build.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": "h", "time": 0}))
    (folder / ".lda_aqu_cpp-half.so").write_bytes(b"half a library")
    assert cpp.build(fake.root, fake.compiler, timeout=30).exists()
    assert not (folder / ".lda_aqu_cpp-half.so").exists()


def test_waiting_for_a_live_lock_times_out(fake):
    folder = cpp.build_dir(fake.root, fake.compiler)
    holder = hold_lock(folder)
    try:
        with pytest.raises(cpp.BuildError, match=f"timed out after 1 s waiting for the build lock.*pid {holder.pid}.*running"):
            cpp.build(fake.root, fake.compiler, timeout=1)
    finally:
        holder.kill()
        holder.wait()
    assert fake.calls() == []


def test_compiler_timeout_kills_the_compiler(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CXX_MODE", "sleep")
    with pytest.raises(cpp.BuildError, match="timed out after 1 s"):
        cpp.build(fake.root, fake.compiler, timeout=1)
    (pid,) = fake.calls()
    time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not cpp._library_file(cpp.build_dir(fake.root, fake.compiler)).exists()


def test_failed_compile_reports_the_log(fake, monkeypatch):
    monkeypatch.setenv("FAKE_CXX_MODE", "fail")
    with pytest.raises(cpp.BuildError, match="(?s)build failed \\(exit 1\\).*error: something is wrong"):
        cpp.build(fake.root, fake.compiler, timeout=30)
    log = cpp.build_dir(fake.root, fake.compiler) / "build.log"
    assert "sample_attention.cpp" in log.read_text()


def test_missing_compiler(tmp_path):
    with pytest.raises(cpp.BuildError, match="no C\\+\\+ compiler"):
        cpp.build(tmp_path, [str(tmp_path / "nope")], timeout=5)


def test_bad_timeout_setting(monkeypatch):
    monkeypatch.setenv(cpp.ENV_TIMEOUT, "soon")
    with pytest.raises(cpp.BuildError, match="number of seconds"):
        cpp.build_timeout()


def test_real_build_from_scratch(tmp_path):
    """The real compiler and source, in a fresh cache folder; loaded in a fresh interpreter (this
    process already holds the library's operator namespace)."""
    if not cpp.is_available(warn=False):
        pytest.skip(f"no working C++ toolchain: {cpp.unavailable_reason()}")
    lib = cpp.build(tmp_path, timeout=300)
    code = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(lib)!r})
        q = torch.randn(1, 4, 4, 4); k = torch.randn(1, 4, 2, 2); v = torch.randn(1, 8, 2, 2)
        off = torch.zeros(1, 2 * 2 * 1, 4, 4)
        out = torch.ops.lda_aqu_cpp.forward(q, k, v, off, None, 2, 1)
        # One point per group at the pixel itself: the bilinear upsample of v (align_corners).
        ref = torch.nn.functional.interpolate(v, (4, 4), mode="bilinear", align_corners=True)
        print(float((out - ref).abs().max()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5
