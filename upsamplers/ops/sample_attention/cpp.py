"""The ``cpp`` backend: C++ CPU kernels of LDA-AQU, built on first use.

The sources register the operators ``lda_aqu_cpp::forward`` and ``lda_aqu_cpp::backward`` (the
sampling attention, ``csrc/sample_attention.cpp``) and ``lda_aqu_cpp::project`` and
``lda_aqu_cpp::offset_net`` (the module around it, ``csrc/lda_aqu_module.cpp``), sharing
``csrc/simd.h``, and ``lda_aqu_cpp::relayout_`` (NCHW <-> channels-last copies and sums,
``csrc/relayout.cpp``); they include only the ATen headers they need, so a build takes seconds, not
minutes. ninja is not required: the compiler is called directly with the include paths, libraries
and C++ ABI flag of the running torch.

Where the library lives: ``$LDA_BENCH_EXTENSIONS_DIR`` if set, else
``${XDG_CACHE_HOME:-~/.cache}/lda-bench/extensions``, in a folder named after a hash of the
sources, the torch version, the compiler command and the flags. A build:

* compiles into a temporary file and renames it into place, so a reader never sees half a library;
* holds an exclusive ``flock`` on ``build.lock`` in that folder while compiling, so concurrent
  processes build once. The kernel drops the lock when its holder dies, so a build that was killed
  midway leaves nothing that blocks the next one (the lock file records the holder's pid and start
  time for error messages only);
* gives up after ``$LDA_BENCH_BUILD_TIMEOUT`` seconds (default 600), both when compiling (the
  compiler's process group is killed) and when waiting for another process's lock.

The compiler is ``$CXX`` (default ``c++``). When the build fails, for instance because there is
no compiler, :func:`is_available` returns False and warns once; ``auto`` then uses the reference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from .layouts import nchw_or_channels_last

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("sample_attention.cpp", "lda_aqu_module.cpp", "relayout.cpp")
HEADERS = ("simd.h", "page_cache.h", "sample_attention_kernels.h")
LIBRARY_NAME = "lda_aqu_cpp"
DEFAULT_TIMEOUT_S = 600.0
ENV_CACHE_DIR = "LDA_BENCH_EXTENSIONS_DIR"
ENV_TIMEOUT = "LDA_BENCH_BUILD_TIMEOUT"


class BuildError(RuntimeError):
    """The C++ extension could not be built or loaded."""


def cache_root() -> Path:
    """Folder under which every build of the extension lives."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lda-bench" / "extensions"


def build_timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise BuildError(f"{ENV_TIMEOUT} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise BuildError(f"{ENV_TIMEOUT} must be positive, got {raw!r}")
    return value


def compiler_command() -> list[str]:
    """The C++ compiler as an argument list (``$CXX`` may carry a launcher such as ccache)."""
    return shlex.split(os.environ.get("CXX") or "c++")


def isa_flags() -> list[str]:
    """Vector instruction set flags matching what ATen itself uses on this CPU.

    The kernels are written with generic vector types; these flags decide their width. The
    flags are part of the cache key, so a cache folder shared by different machines keeps one
    build per instruction set.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        return ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx512bw", "-mavx2", "-mfma"]
    if capability == "AVX2":
        return ["-mavx2", "-mfma"]
    return []


def compile_flags() -> list[str]:
    abi = int(torch.compiled_with_cxx11_abi())
    # -std=c++20: the torch headers need it. -Wno-psabi: GCC notes that passing 64-byte vectors by
    # value changes the ABI, which does not matter for functions inside one library.
    # -fno-trapping-math lets GCC vectorise the branch-free position arithmetic (selects, float to
    # int casts); it does not change any result (no reassociation, no contraction of divisions).
    return ["-O3", "-DNDEBUG", "-std=c++20", "-fPIC", "-shared", "-fopenmp", "-Wno-psabi", "-fno-trapping-math",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *isa_flags()]


def _source_bytes() -> bytes:
    return b"".join((SOURCE_DIR / name).read_bytes() for name in (*SOURCES, *HEADERS))


def build_key(compiler: list[str], flags: list[str]) -> str:
    """Hash of everything the library depends on: sources, torch build, compiler command, flags."""
    h = hashlib.sha256()
    for part in (_source_bytes(), torch.__version__.encode(), str(torch.version.git_version).encode(),
                 json.dumps(compiler).encode(), json.dumps(flags).encode(),
                 f"{sys.platform}-{platform.machine()}".encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:20]


def build_dir(root: Path | None = None, compiler: list[str] | None = None) -> Path:
    compiler = compiler_command() if compiler is None else compiler
    key = build_key(compiler, compile_flags())
    version = torch.__version__.split("+")[0]
    return (cache_root() if root is None else root) / f"torch{version}-{key}"


def _library_file(folder: Path) -> Path:
    return folder / f"{LIBRARY_NAME}.so"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists but belongs to someone else
        return True
    return True


def _lock_holder(path: Path) -> str:
    """Who holds the lock, for error messages."""
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
        age = time.time() - float(info["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"
    state = "running" if _pid_alive(pid) else "no longer running"
    return f"pid {pid} on {info.get('host', '?')} ({state}, started {age:.0f} s ago)"


@contextlib.contextmanager
def build_lock(folder: Path, timeout: float, poll_s: float = 0.05) -> Iterator[None]:
    """Exclusive lock on ``folder/build.lock`` for at most ``timeout`` seconds of waiting.

    An ``flock`` belongs to an open file description, so the kernel releases it when the holding
    process dies, however it dies: a killed build cannot leave a stale lock behind. The file's
    content (holder pid, host, start time) only explains a timeout.
    """
    import fcntl  # POSIX only; the build itself is POSIX-only too (gcc/clang style flags)

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "build.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildError(
                        f"timed out after {timeout:.0f} s waiting for the build lock {path}, held by "
                        f"{_lock_holder(path)}; raise {ENV_TIMEOUT} or remove the folder if that process is stuck"
                    ) from None
                time.sleep(poll_s)
        import socket

        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _run_compiler(cmd: list[str], timeout: float, log: Path) -> None:
    try:
        # A session of its own, so that a timeout kills the compiler's children (cc1plus, ld) too.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise BuildError(f"cannot run the C++ compiler {cmd[0]!r}: {exc}") from None
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise BuildError(f"the C++ build timed out after {timeout:.0f} s (set {ENV_TIMEOUT} to allow more)") from None
    text = output.decode(errors="replace")
    log.write_text(" ".join(shlex.quote(c) for c in cmd) + "\n\n" + text)
    if proc.returncode != 0:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise BuildError(f"the C++ build failed (exit {proc.returncode}); full log in {log}:\n{tail}")


def build(root: Path | None = None, compiler: list[str] | None = None, timeout: float | None = None) -> Path:
    """Compile the extension unless an up-to-date build exists; return the library's path."""
    compiler = compiler_command() if compiler is None else compiler
    timeout = build_timeout() if timeout is None else timeout
    folder = build_dir(root, compiler)
    lib = _library_file(folder)
    if lib.exists():
        return lib
    if not compiler or shutil.which(compiler[0]) is None:
        raise BuildError(
            f"no C++ compiler: {compiler[0] if compiler else '(empty $CXX)'!r} was not found; "
            "install g++ or clang++, or point $CXX at one"
        )
    started = time.monotonic()
    with build_lock(folder, timeout):
        if lib.exists():  # another process built it while this one waited
            return lib
        from torch.utils import cpp_extension  # imported here only: it logs CUDA probing noise

        # Temporaries of killed builds (nobody else can be compiling here while we hold the lock).
        for stale in folder.glob(f".{LIBRARY_NAME}-*.so"):
            with contextlib.suppress(OSError):
                stale.unlink()
        fd, tmp = tempfile.mkstemp(prefix=f".{LIBRARY_NAME}-", suffix=".so", dir=folder)
        os.close(fd)
        try:
            cmd = [*compiler, *compile_flags()]
            cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
            cmd += [str(SOURCE_DIR / name) for name in SOURCES]
            cmd += ["-o", tmp]
            for p in cpp_extension.library_paths():
                cmd += [f"-L{p}", f"-Wl,-rpath,{p}"]
            cmd += ["-lc10", "-ltorch_cpu"]
            remaining = max(1.0, timeout - (time.monotonic() - started))
            _run_compiler(cmd, remaining, folder / "build.log")
            if not os.path.getsize(tmp):
                raise BuildError(f"the C++ compiler produced an empty library; see {folder / 'build.log'}")
            os.replace(tmp, lib)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return lib


class _Extension:
    """Build-and-load state of the process: one attempt, one warning."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.path: Path | None = None
        self.error: str | None = None
        self._warned = False

    def load(self) -> bool:
        with self._lock:
            if self.path is None and self.error is None:
                try:
                    path = build()
                    torch.ops.load_library(str(path))
                    self.path = path
                except Exception as exc:  # a broken toolchain must not break the library
                    self.error = f"{type(exc).__name__}: {exc}"
            return self.path is not None

    def warn_once(self) -> None:
        if self.error is not None and not self._warned:
            self._warned = True
            warnings.warn(
                f"LDA-AQU: the C++ CPU backend is unavailable, using the reference backend instead ({self.error})",
                RuntimeWarning,
                stacklevel=4,
            )


_EXTENSION = _Extension()


def is_available(warn: bool = True) -> bool:
    """Whether the C++ kernels are loaded (building them on the first call)."""
    ok = _EXTENSION.load()
    if not ok and warn:
        _EXTENSION.warn_once()
    return ok


def unavailable_reason() -> str | None:
    return None if is_available(warn=False) else _EXTENSION.error


def library_ops():
    """The ``torch.ops.lda_aqu_cpp`` namespace, building the library on first use."""
    if not is_available(warn=False):
        raise BuildError(f"the LDA-AQU C++ backend is unavailable: {_EXTENSION.error}")
    return getattr(torch.ops, LIBRARY_NAME)


@dataclass(frozen=True)
class CpuCacheInfo:
    """The C++ kernels' cache of large forward-output blocks (``csrc/page_cache.h``): a block goes
    back to it when its tensor dies, so that the next call writes into pages that are already
    mapped instead of faulting in (and zeroing) fresh ones."""

    cached_bytes: int  # held now, for no live tensor
    cached_blocks: int
    limit_bytes: int  # $LDA_BENCH_CPU_CACHE_MB (default 256 MB), or set_cpu_cache_limit
    hits: int  # requests served from the cache since the process started
    misses: int  # requests that mapped a new block


def cpu_cache_info() -> CpuCacheInfo:
    """The state of the page cache (all zeros where the C++ backend is unavailable)."""
    if not is_available(warn=False):
        return CpuCacheInfo(0, 0, 0, 0, 0)
    return CpuCacheInfo(*library_ops().cpu_cache_stats())


def set_cpu_cache_limit(megabytes: float) -> float:
    """Sets how many MB the page cache may hold (0 turns it off and releases what it holds);
    returns the previous limit in MB."""
    if megabytes < 0:
        raise ValueError(f"the cache limit must be >= 0 MB, got {megabytes}")
    return library_ops().cpu_cache_set_limit(int(megabytes * 2**20)) / 2**20


def empty_cpu_cache() -> int:
    """Returns every cached block to the OS (live tensors keep theirs); the bytes released."""
    if not is_available(warn=False):
        return 0
    return library_ops().cpu_cache_trim(0)


def _relayout_applies(t: Tensor) -> bool:
    return (t.dim() == 4 and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last))
            and is_available(warn=False))


def to_memory_format(t: Tensor, memory_format: torch.memory_format) -> Tensor:
    """``t`` as a dense map in ``memory_format`` (``torch.contiguous_format`` or
    ``torch.channels_last``), itself when it already is. Dense float32/float64 CPU maps change
    layout through the kernels' tile transposes (``lda_aqu_cpp::relayout_``); anything else
    through ATen, whose copy between the two layouts strides through one side."""
    if t.is_contiguous(memory_format=memory_format):
        return t
    if memory_format not in (torch.contiguous_format, torch.channels_last) or not _relayout_applies(t):
        return t.contiguous(memory_format=memory_format)
    out = torch.empty_like(t, memory_format=memory_format)
    library_ops().relayout_(out, t, False)
    return out


def add_across_layouts_(dst: Tensor, src: Tensor) -> Tensor:
    """``dst += src`` in place, through the tile transposes where the two are dense CPU maps of one
    float dtype in different layouts; returns ``dst``."""
    if (dst.dtype == src.dtype and dst.shape == src.shape and _relayout_applies(dst) and _relayout_applies(src)
            and dst.data_ptr() != src.data_ptr()):
        library_ops().relayout_(dst, src, True)
        return dst
    return dst.add_(src)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute ``dtype`` in: they exist for float32 and float64; half types
    are computed in float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def embedding_rows(embedding: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """heads x P x Ch/heads -> P x Ch (heads side by side, as in the query), the kernels' layout."""
    if embedding is None:
        return None
    return embedding.to(dtype).permute(1, 0, 2).reshape(embedding.shape[1], -1).contiguous()


def _prepare(query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None):
    dtype = compute_dtype(query.dtype)
    # NCHW everywhere; the kernels make their own channels-last copies of key and value.
    q, k, v, off = (t.to(dtype).contiguous() for t in (query, key, value, offsets))
    return q, k, v, off, embedding_rows(embedding, dtype)


def forward(query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None, groups: int,
            num_heads: int) -> Tensor:
    """Forward of :func:`upsamplers.ops.sample_attention` with the C++ kernels."""
    ops = library_ops()
    out = ops.forward(*_prepare(query, key, value, offsets, embedding), groups, num_heads)
    return out.to(query.dtype)


def backward(grad: Tensor, query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None,
             groups: int, num_heads: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients with respect to query, key, value, offsets and embedding (None without one)."""
    ops = library_ops()
    q, k, v, off, emb = _prepare(query, key, value, offsets, embedding)
    g = nchw_or_channels_last(grad.to(q.dtype))  # the kernel reads either layout as it is
    dq, dk, dv, doff, demb = ops.backward(g, q, k, v, off, emb, groups, num_heads)
    d_emb = None
    if embedding is not None:
        heads, points, d = embedding.shape
        d_emb = demb.view(points, heads, d).permute(1, 0, 2).contiguous().to(embedding.dtype)
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype), doff.to(offsets.dtype), d_emb
