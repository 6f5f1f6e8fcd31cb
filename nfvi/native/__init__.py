"""nfvi's compiled CPU kernels (``kernels.c``): fused flow stacks and maxout's window maximum.

:mod:`nfvi.flows.fused` runs a planar or radial K-layer stack as one autograd node, but its
torch loop still dispatches a few small operations per layer, forward and backward: at K = 80
on a CPU some 600 dispatches per training step, each costing more than the arithmetic it does
(a row of 40 numbers). ``kernels.c`` runs the same forward and the same hand-derived backward
one example at a time, all K layers of a row in the cache, with no dispatch at all; the
formulas are those of :mod:`nfvi.flows.fused`'s docstring, and the tests hold the two to 1e-10
in float64 (``tests/test_native.py``). Maxout's max over windows of 4 adjacent outputs, which
torch can only do as strided slices (its reductions over a 4-wide innermost axis do not
vectorize), is one pass over memory there, forward and backward
(:class:`nfvi.vae.networks.Maxout`).

The library is built on first use with the system C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang`` on ``PATH``; plain ``-O3``, no ``-march=native``, so that one build serves every
machine that shares the cache) into ``$NFVI_CACHE_DIR`` (default ``$XDG_CACHE_HOME/nfvi`` or
``~/.cache/nfvi``), under a name keyed by the source and the flags: compiled once per source
version, written to a temporary file and renamed into place, so concurrent jobs of a sweep
never load a half-written file. It is loaded with :mod:`ctypes` and called on the tensors'
memory (float32 or float64, CPU, parameters with a unit stride along the last axis).

Large calls without a graph to record -- the importance-weighted NLL's S samples through the
flow, maxout over its chunks -- run on ``torch.get_num_threads()`` threads, each on its own
block of rows (ctypes releases the GIL during a call; rows are independent, so the result
does not depend on the thread count); a training step's calls are too small to gain.

Where it cannot be used -- no compiler, a failed build, CUDA tensors, other dtypes, inside
``torch.func`` transforms -- the torch code runs instead, the same map; :func:`status` says
which and why. ``NFVI_NATIVE=0`` in the environment (or :func:`set_enabled`) turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
VERSION = 3  # kernels.c's nfvi_kernels_version()
FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "lib": None, "why": "not built yet"}
_enabled = os.environ.get("NFVI_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(on: bool) -> None:
    """Use the compiled kernels where they apply (True, the default unless ``NFVI_NATIVE=0``)
    or always the torch loops (False)."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def cache_dir() -> Path:
    if os.environ.get("NFVI_CACHE_DIR"):
        return Path(os.environ["NFVI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nfvi"


def compiler() -> str | None:
    """The C compiler: ``$CC`` if set, else the first of ``cc``, ``gcc``, ``clang`` on PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def library_path() -> Path:
    """Where the build for this source, these flags and this platform lives."""
    key = hashlib.sha256(SOURCE.read_bytes() + repr((FLAGS, sys.platform,
                                                     platform.machine())).encode())
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    return cache_dir() / f"kernels-{key.hexdigest()[:16]}{suffix}"


def _build(target: Path) -> None:
    cc = compiler()
    if cc is None:
        raise OSError("no C compiler found (set CC, or install cc/gcc/clang)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=target.suffix,
                               dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True,
                              text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise OSError(f"{cc} failed: {done.stderr.strip()[:500]}")
        os.replace(tmp, target)  # atomic: another job sees no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    """argtypes for every entry point (longs and pointers; without them ctypes would pass
    Python ints as 32-bit ints). ``getattr``, not ``lib[...]``: only the attribute is cached."""
    L, V = ctypes.c_long, ctypes.c_void_p
    shapes = [L] * 4
    for suf in _SUFFIX.values():
        getattr(lib, f"planar_forward_{suf}").argtypes = shapes + [V, V, L, L, V, L, L, V, L, L,
                                                          V, V, V, V]
        getattr(lib, f"planar_backward_{suf}").argtypes = shapes + [V, V, V, L, L, V, L, L, V, V,
                                                           V, V, V, V]
        getattr(lib, f"radial_forward_{suf}").argtypes = shapes + [V, V, L, L, V, L, L, V, L, L,
                                                          V, V, V, V]
        getattr(lib, f"radial_backward_{suf}").argtypes = shapes + [V, V, V, L, L, V, L, L, V, V,
                                                           V, V, V, V]
        getattr(lib, f"householder_forward_{suf}").argtypes = shapes + [V, V, L, L, V, L, L,
                                                               V, V, V, V]
        getattr(lib, f"householder_backward_{suf}").argtypes = shapes + [V, V, L, L, V, L, L,
                                                                V, V, V, V]
        R = ctypes.c_float if suf == "f32" else ctypes.c_double
        getattr(lib, f"planar_constrain_{suf}").argtypes = [L, L, L, R, R, V, L, L, V, L, L, V]
        getattr(lib, f"planar_constrain_backward_{suf}").argtypes = [L, L, L, R, R, V, L, L, V,
                                                                     L, L, V, V, V]
        getattr(lib, f"window_max_{suf}").argtypes = [L, L, V, V]
        getattr(lib, f"window_max_backward_{suf}").argtypes = [L, L, V, V, V, V]
        for name in ("planar_forward", "planar_backward", "planar_constrain",
                     "planar_constrain_backward", "radial_forward", "radial_backward",
                     "householder_forward", "householder_backward", "window_max",
                     "window_max_backward"):
            getattr(lib, f"{name}_{suf}").restype = None


def _load() -> ctypes.CDLL:
    path = library_path()
    if not path.exists():
        _build(path)
    lib = ctypes.CDLL(str(path))
    if lib.nfvi_kernels_version() != VERSION:
        raise OSError(f"{path} is version {lib.nfvi_kernels_version()}, expected {VERSION}")
    _declare(lib)
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, built on the first call; None where they cannot be had (then
    :func:`status` says why; the failure is logged once, at debug level, and not retried)."""
    if not _enabled:
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["lib"], _state["why"] = _load(), None
                except (OSError, subprocess.SubprocessError, AttributeError) as err:
                    _state["why"] = str(err)
                    log.debug("native kernels unavailable, using the torch code: %s", err)
                _state["tried"] = True
    return _state["lib"]  # type: ignore[return-value]


def status() -> str:
    """One line: whether the CPU kernels run compiled, and if not, why."""
    if not _enabled:
        return "torch loops (native kernels switched off: NFVI_NATIVE=0)"
    if library() is not None:
        return f"native C kernels ({library_path()})"
    return f"torch loops (native kernels unavailable: {_state['why']})"


def usable(*tensors: Tensor) -> bool:
    """Whether the compiled kernels can take these tensors: CPU, one dtype of float32 or
    float64, no ``torch.func`` transform active, the library loaded."""
    dtype = tensors[0].dtype
    if dtype not in _SUFFIX or not _enabled:
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return False
    return library() is not None


# ----------------------------------------------------------------------------- calls

PARALLEL_WORK = 1 << 20  # elements of work below which threads cost more than they save
_pool: tuple[int, object, int] | None = None  # (threads, executor, owner pid)


def _row_blocks(N: int, P: int, work: int) -> list[tuple[int, int]]:
    """``[(r0, r1), ...]``: one block of rows per thread for a call of ``work`` elements, the
    blocks' starts multiples of ``P`` when ``1 < P < N`` (row ``r`` reads parameter row
    ``r % P``, so a block starting at a multiple of ``P`` reads them as the whole call does)."""
    threads = torch.get_num_threads()
    if threads < 2 or work < PARALLEL_WORK:
        return [(0, N)]
    unit = P if 1 < P < N else 1
    units = N // unit
    per = -(-units // min(threads, units)) * unit
    return [(r0, min(N, r0 + per)) for r0 in range(0, N, per)]


def _run_blocks(calls: list) -> None:
    """Run the zero-argument ``calls`` (ctypes calls on disjoint rows) concurrently."""
    global _pool
    if len(calls) == 1:
        calls[0]()
        return
    from concurrent.futures import ThreadPoolExecutor

    with _lock:  # a forked child inherits the pool but not its threads: a new one there
        if _pool is None or _pool[0] < len(calls) or _pool[2] != os.getpid():
            _pool = (len(calls), ThreadPoolExecutor(len(calls), "nfvi-native"), os.getpid())
        pool = _pool[1]
    futures = [pool.submit(c) for c in calls[1:]]
    calls[0]()  # the caller's thread takes the first block
    for f in futures:
        f.result()


def _param(t: Tensor) -> tuple[Tensor, int, int]:
    """A ``[K, P, n]`` parameter with a unit last stride, and its layer and row strides."""
    if t.stride(-1) != 1 and t.shape[-1] != 1:
        t = t.contiguous()
    return t, t.stride(0), t.stride(1)


def _sizes(z: Tensor, p: Tensor) -> tuple[int, int, int, int]:
    N, D = z.shape
    K, P = p.shape[0], p.shape[1]
    if P != 1 and N % P != 0:
        raise ValueError(f"{N} rows cannot take parameters for {P} rows")
    return N, P, K, D


def _stack_forward(kind: str, z: Tensor, params: tuple[Tensor, ...], keep: bool
                   ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The planar, radial and Householder forward kernels' shared call: ``z [N, D]`` through
    the ``[K, P, n]`` parameters; ``keep`` saves ``[K, N, D]`` and ``[K, N, 1]`` for the backward
    in one call, else large calls run on threads over blocks of rows (:func:`_row_blocks`)."""
    lib = library()
    z = z.contiguous()
    N, P, K, D = _sizes(z, params[0])
    params = [_param(t) for t in params]
    out, ld = torch.empty_like(z), z.new_empty(N)
    fn, e = getattr(lib, f"{kind}_forward_{_SUFFIX[z.dtype]}"), z.element_size()
    if keep:  # the saved [K, N, D] layout spans all rows: one call
        saved = z.new_empty(K, N, D), z.new_empty(K, N, 1)
        fn(N, P, K, D, z.data_ptr(), *[x for t, sk, sp in params for x in (t.data_ptr(), sk, sp)],
           out.data_ptr(), ld.data_ptr(), saved[0].data_ptr(), saved[1].data_ptr())
        return out, ld, *saved

    def block(r0: int, r1: int):
        p0 = r0 if P == N else 0  # per-example parameters: the block's own rows
        args = [x for t, sk, sp in params for x in (t.data_ptr() + p0 * sp * e, sk, sp)]
        return lambda: fn(r1 - r0, r1 - r0 if P == N else P, K, D, z.data_ptr() + r0 * D * e,
                          *args, out.data_ptr() + r0 * D * e, ld.data_ptr() + r0 * e,
                          None, None)

    _run_blocks([block(r0, r1) for r0, r1 in _row_blocks(N, P, N * K * D)])
    return out, ld, None, None


def planar_forward(z: Tensor, w: Tensor, u: Tensor, b: Tensor, keep: bool
                   ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(z_K [N, D], log_det [N], inputs [K, N, D], h [K, N, 1])`` (the last two None unless
    ``keep``); ``w, u_hat [K, P, D]``, ``b [K, P, 1]``, row ``r`` of ``z`` reading parameter
    row ``r % P`` (``P = 1``: shared)."""
    return _stack_forward("planar", z, (w, u, b), keep)


def planar_backward(g_z: Tensor, g_ld: Tensor, w: Tensor, u: Tensor, zin: Tensor, h: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dL/dz_0 [N, D], dL/dw [K, P, D], dL/du_hat [K, P, D], dL/db [K, P, 1])``."""
    lib = library()
    g_z, g_ld = g_z.contiguous(), g_ld.contiguous()
    N, P, K, D = _sizes(g_z, w)
    (w, swk, swp), (u, suk, sup) = _param(w), _param(u)
    g0 = torch.empty_like(g_z)
    gw, gu, gb = g_z.new_zeros(K, P, D), g_z.new_zeros(K, P, D), g_z.new_zeros(K, P, 1)
    getattr(lib, f"planar_backward_{_SUFFIX[g_z.dtype]}")(
        N, P, K, D, g_z.data_ptr(), g_ld.data_ptr(), w.data_ptr(), swk, swp, u.data_ptr(),
        suk, sup, zin.data_ptr(), h.data_ptr(), g0.data_ptr(), gw.data_ptr(), gu.data_ptr(),
        gb.data_ptr())
    return g0, gw, gu, gb


def planar_constrain(u: Tensor, w: Tensor, shift: float, scale: float) -> Tensor:
    """Planar's ``u_hat [K, P, D]`` from the raw ``u, w [K, P, D]``:
    ``u + (m(w^T u) - w^T u) w / max(||w||^2, tiny)``, ``m(x) = scale (softplus(x + shift) - 1)``
    (:class:`nfvi.flows.fused.PlanarConstraint`)."""
    (u, suk, sup), (w, swk, swp) = _param(u), _param(w)
    K, P, D = u.shape
    out = u.new_empty(K, P, D)
    getattr(library(), f"planar_constrain_{_SUFFIX[u.dtype]}")(
        K, P, D, shift, scale, w.data_ptr(), swk, swp, u.data_ptr(), suk, sup, out.data_ptr())
    return out


def planar_constrain_backward(u: Tensor, w: Tensor, shift: float, scale: float, g: Tensor
                              ) -> tuple[Tensor, Tensor]:
    """``(dL/du, dL/dw)`` ``[K, P, D]`` of :func:`planar_constrain` from ``g = dL/du_hat``."""
    (u, suk, sup), (w, swk, swp) = _param(u), _param(w)
    K, P, D = u.shape
    g = g.contiguous()
    gu, gw = torch.empty_like(g), torch.empty_like(g)
    getattr(library(), f"planar_constrain_backward_{_SUFFIX[u.dtype]}")(
        K, P, D, shift, scale, w.data_ptr(), swk, swp, u.data_ptr(), suk, sup, g.data_ptr(),
        gu.data_ptr(), gw.data_ptr())
    return gu, gw


def radial_forward(z: Tensor, c: Tensor, alpha: Tensor, beta: Tensor, keep: bool
                   ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(z_K [N, D], log_det [N], d [K, N, D], r [K, N, 1])`` (the last two None unless
    ``keep``); ``c [K, P, D]``, ``alpha, beta [K, P, 1]`` constrained."""
    return _stack_forward("radial", z, (c, alpha, beta), keep)


def radial_backward(g_z: Tensor, g_ld: Tensor, alpha: Tensor, beta: Tensor, d: Tensor,
                    r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dL/dz_0 [N, D], dL/dc [K, P, D], dL/dalpha [K, P, 1], dL/dbeta [K, P, 1])``."""
    lib = library()
    g_z, g_ld = g_z.contiguous(), g_ld.contiguous()
    N, D = g_z.shape
    K, P = alpha.shape[0], alpha.shape[1]
    (alpha, sak, sap), (beta, sbk, sbp) = _param(alpha), _param(beta)
    g0 = torch.empty_like(g_z)
    gc, ga, gb = g_z.new_zeros(K, P, D), g_z.new_zeros(K, P, 1), g_z.new_zeros(K, P, 1)
    getattr(lib, f"radial_backward_{_SUFFIX[g_z.dtype]}")(
        N, P, K, D, g_z.data_ptr(), g_ld.data_ptr(), alpha.data_ptr(), sak, sap,
        beta.data_ptr(), sbk, sbp, d.data_ptr(), r.data_ptr(), g0.data_ptr(), gc.data_ptr(),
        ga.data_ptr(), gb.data_ptr())
    return g0, gc, ga, gb


def householder_forward(z: Tensor, v: Tensor, n_raw: Tensor, keep: bool
                        ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(z_K [N, D], log_det [N] (zeros), inputs [K, N, D], a [K, N, 1])`` (the last two None
    unless ``keep``; ``a_k = v_k^T z_{k-1}``); ``v [K, P, D]`` and its ``n_raw = v^T v
    [K, P, 1]``."""
    return _stack_forward("householder", z, (v, n_raw), keep)


def householder_backward(g_z: Tensor, v: Tensor, n_raw: Tensor, zin: Tensor, a: Tensor
                         ) -> tuple[Tensor, Tensor]:
    """``(dL/dz_0 [N, D], dL/dv [K, P, D])``."""
    lib = library()
    g_z = g_z.contiguous()
    N, P, K, D = _sizes(g_z, v)
    (v, svk, svp), (n_raw, snk, snp) = _param(v), _param(n_raw)
    g0, gv = torch.empty_like(g_z), g_z.new_zeros(K, P, D)
    getattr(lib, f"householder_backward_{_SUFFIX[g_z.dtype]}")(
        N, P, K, D, g_z.data_ptr(), v.data_ptr(), svk, svp, n_raw.data_ptr(), snk, snp,
        zin.data_ptr(), a.data_ptr(), g0.data_ptr(), gv.data_ptr())
    return g0, gv


def window_max(v: Tensor) -> Tensor:
    """``v [..., pool]`` (contiguous) -> ``max over the last axis [...]``."""
    lib = library()
    v = v.contiguous()
    m = v.new_empty(v.shape[:-1])
    fn, e, R, pool = getattr(lib, f"window_max_{_SUFFIX[v.dtype]}"), v.element_size(), \
        m.numel(), v.shape[-1]
    _run_blocks([lambda r0=r0, r1=r1: fn(r1 - r0, pool, v.data_ptr() + r0 * pool * e,
                                         m.data_ptr() + r0 * e)
                 for r0, r1 in _row_blocks(R, 1, v.numel())])
    return m


def window_max_backward(v: Tensor, m: Tensor, g: Tensor) -> Tensor:
    """``dL/dv [..., pool]``: ``g`` where ``v`` equals its window's max ``m``, else 0."""
    lib = library()
    v, m, g = v.contiguous(), m.contiguous(), g.contiguous()
    out = torch.empty_like(v)
    getattr(lib, f"window_max_backward_{_SUFFIX[v.dtype]}")(
        m.numel(), v.shape[-1], v.data_ptr(), m.data_ptr(), g.data_ptr(), out.data_ptr())
    return out
