"""The fused planar, radial and Householder stacks on a GPU: all K layers in one Triton
kernel, forward and backward.

:mod:`nfvi.flows.fused` runs a planar, radial or Householder stack as one autograd node, but on
a GPU its torch loop still launches a few kernels per layer (planar: 3 forward, 4 backward;
radial more): at K = 80 some 560 launches per planar training step, each a few microseconds of
launch latency for a few thousand numbers, so the step is launch-bound (a CUDA graph shortens
each launch but keeps them all). Here each block of ``BLOCK_N`` rows runs its K layers in
registers, one launch for the forward and one for the backward: the same maps and hand-derived
gradients as the torch loop and ``kernels.c`` (the formulas are in :mod:`nfvi.flows.fused`'s
docstring), tested against the torch loop to 1e-10 in float64 (``tests/test_native_gpu.py``: on
a CUDA device, and on the CPU through Triton's interpreter, ``TRITON_INTERPRET=1``).

Layout as ``kernels.c``: ``z [N, D]`` contiguous; parameters ``[K, P, D]`` / ``[K, P, 1]`` with
a unit stride along D, row ``r`` reading parameter row ``r % P`` (``P = N`` per example, ``1``
shared, ``B`` for the importance-weighted NLL's ``N = S B`` sample-major rows). The backward
writes each row's parameter gradients (``[K, N, D]`` or ``[K, N, 1]``), summed here over the
rows that share a parameter, as the torch loop does.

Used where Triton imports and the tensors are on a CUDA device (float32 or float64), not
inside ``torch.func`` transforms or ``torch.compile`` (inductor fuses the torch loop itself
there); ``NFVI_NATIVE=0`` or :func:`set_enabled` turns it off. ``NFVI_TRITON_ON_CPU=1`` with
``TRITON_INTERPRET=1`` runs it on CPU tensors through the interpreter (for the tests only:
it is slow). Like the rest of :mod:`nfvi.native` it imports nothing else of nfvi.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

import torch
from torch import Tensor

_DTYPES = (torch.float32, torch.float64)
MAX_D = 1024  # one row's D numbers (padded to a power of 2) stay in registers
_enabled = os.environ.get("NFVI_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")
#: kernel launches so far (the tests read it to see which path ran)
launches = 0


def set_enabled(on: bool) -> None:
    """Use the Triton kernels where they apply (True, the default unless ``NFVI_NATIVE=0``)."""
    global _enabled
    _enabled = bool(on)


def enabled() -> bool:
    return _enabled


def _on_cpu_allowed() -> bool:
    return (os.environ.get("NFVI_TRITON_ON_CPU") == "1"
            and os.environ.get("TRITON_INTERPRET") == "1")


def _kernels():
    """The kernels module (Triton imported at the first call)."""
    return importlib.import_module("nfvi.native._triton")


@functools.cache
def available() -> bool:
    """Whether Triton is installed (CPU-only and non-NVIDIA builds of torch may lack it)."""
    return importlib.util.find_spec("triton") is not None


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels can take these tensors: Triton present, all on one CUDA device (or
    the CPU under the interpreter), one dtype of float32 or float64, no ``torch.func``
    transform, not being compiled, ``D <= MAX_D``."""
    if not _enabled:
        return False
    first = tensors[0]
    if first.dtype not in _DTYPES or first.shape[-1] > MAX_D:
        return False
    kind = "cpu" if _on_cpu_allowed() else "cuda"
    if any(t.device != first.device or t.device.type != kind or t.dtype != first.dtype
           for t in tensors):
        return False
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return False
    return not torch.compiler.is_compiling() and available()


def _blocks(N: int, D: int) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_D)``: D padded to a power of 2; a few rows per program for a
    training batch (many programs for a sequential, latency-bound loop), more for the IS
    pass's hundreds of thousands of rows."""
    block_d = 1 << max(D - 1, 0).bit_length()
    rows = 16 if N >= 1 << 16 else 4
    return max(1, min(rows, 4096 // block_d)), block_d


def _param(t: Tensor) -> tuple[Tensor, int, int]:
    if t.stride(-1) != 1 and t.shape[-1] != 1:
        t = t.contiguous()
    return t, t.stride(0), t.stride(1)


_TINY: dict[tuple, Tensor] = {}


def _tiny(x: Tensor) -> Tensor:
    """The dtype's smallest normal number as a 1-element tensor on ``x``'s device (a float64
    kernel argument would be passed as float32, where it is 0), made once per device."""
    key = (x.device, x.dtype)
    if key not in _TINY:
        _TINY[key] = x.new_full((1,), torch.finfo(x.dtype).tiny)
    return _TINY[key]


def _forward(kind: str, z: Tensor, params: tuple[Tensor, ...], keep: bool
             ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The forward kernels' shared call: ``z [N, D]`` through the ``[K, P, n]`` parameters;
    ``keep`` also returns the ``[K, N, D]`` and ``[K, N, 1]`` saved for the backward."""
    global launches
    z = z.contiguous()
    N, D = z.shape
    K, P = params[0].shape[0], params[0].shape[1]
    if P != 1 and N % P != 0:
        raise ValueError(f"{N} rows cannot take parameters for {P} rows")
    params = [_param(t) for t in params]
    out, ld = torch.empty_like(z), z.new_empty(N)
    saved = (z.new_empty(K, N, D), z.new_empty(K, N, 1)) if keep else (out, ld)  # unused
    if N and K:
        block_n, block_d = _blocks(N, D)
        getattr(_kernels(), f"{kind}_forward_kernel")[(-(-N // block_n),)](
            z, *[t for t, _, _ in params], out, ld, *saved, _tiny(z), N, P, K,
            *[x for _, sk, sp in params for x in (sk, sp)], D=D, BLOCK_N=block_n,
            BLOCK_D=block_d, KEEP=keep)
        launches += 1
    else:
        out.copy_(z)
        ld.zero_()
    return (out, ld, *saved) if keep else (out, ld, None, None)


def planar_forward(z: Tensor, w: Tensor, u: Tensor, b: Tensor, keep: bool
                   ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(z_K [N, D], log_det [N], inputs [K, N, D], h [K, N, 1])`` (the last two None unless
    ``keep``); ``w, u_hat [K, P, D]``, ``b [K, P, 1]``, row ``r`` reading parameter row
    ``r % P``."""
    return _forward("planar", z, (w, u, b), keep)


def planar_backward(g_z: Tensor, g_ld: Tensor, w: Tensor, u: Tensor, zin: Tensor, h: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dL/dz_0 [N, D], dL/dw [K, P, D], dL/du_hat [K, P, D], dL/db [K, P, 1])``: the kernel
    writes each row's parameter gradients, summed here over the rows that share one."""
    (w, swk, swp), (u, suk, sup) = _param(w), _param(u)
    return _backward("planar", g_z, g_ld, (w, u, zin.contiguous(), h.contiguous()),
                     (swk, swp, suk, sup), w.shape[1], wide=(True, True, False))


def radial_forward(z: Tensor, c: Tensor, alpha: Tensor, beta: Tensor, keep: bool
                   ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(z_K [N, D], log_det [N], d [K, N, D], r [K, N, 1])`` (the last two None unless
    ``keep``); ``c [K, P, D]``, ``alpha, beta [K, P, 1]`` constrained."""
    return _forward("radial", z, (c, alpha, beta), keep)


def radial_backward(g_z: Tensor, g_ld: Tensor, alpha: Tensor, beta: Tensor, d: Tensor,
                    r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dL/dz_0 [N, D], dL/dc [K, P, D], dL/dalpha [K, P, 1], dL/dbeta [K, P, 1])``."""
    (alpha, sak, sap), (beta, sbk, sbp) = _param(alpha), _param(beta)
    return _backward("radial", g_z, g_ld, (alpha, beta, d.contiguous(), r.contiguous()),
                     (sak, sap, sbk, sbp), alpha.shape[1], wide=(True, False, False))


def householder_forward(z: Tensor, v: Tensor, n_raw: Tensor, keep: bool
                        ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(z_K [N, D], log_det [N] (zeros), inputs [K, N, D], a [K, N, 1])`` (the last two None
    unless ``keep``; ``a_k = v_k^T z_{k-1}``); ``v [K, P, D]`` and ``n_raw = v^T v
    [K, P, 1]``."""
    return _forward("householder", z, (v, n_raw), keep)


def householder_backward(g_z: Tensor, v: Tensor, n_raw: Tensor, zin: Tensor, a: Tensor
                         ) -> tuple[Tensor, Tensor]:
    """``(dL/dz_0 [N, D], dL/dv [K, P, D])``: the kernel writes each row's gradient of ``v``,
    summed here over the rows that share one."""
    global launches
    (v, svk, svp), (n_raw, snk, snp) = _param(v), _param(n_raw)
    g_z = g_z.contiguous()
    N, D = g_z.shape
    K, P = v.shape[0], v.shape[1]
    g0, gv = torch.empty_like(g_z), g_z.new_empty(K, N, D)
    if N and K:
        block_n, block_d = _blocks(N, D)
        _kernels().householder_backward_kernel[(-(-N // block_n),)](
            g_z, v, n_raw, zin.contiguous(), a.contiguous(), g0, gv, _tiny(g_z), N, P, K,
            svk, svp, snk, snp, D=D, BLOCK_N=block_n, BLOCK_D=block_d)
        launches += 1
    else:
        g0.copy_(g_z)
        gv.zero_()
    return g0, _rows_to(gv, P)


def _backward(kind: str, g_z: Tensor, g_ld: Tensor, inputs: tuple[Tensor, ...],
              strides: tuple[int, ...], P: int, wide: tuple[bool, bool, bool]
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward kernels' shared call: ``dL/dz_0`` and the three parameter gradients, the
    kernel's per-row ``[K, N, D]`` (``wide``) or ``[K, N, 1]`` summed to ``P`` rows."""
    global launches
    g_z, g_ld = g_z.contiguous(), g_ld.contiguous()
    N, D = g_z.shape
    K = inputs[2].shape[0]
    g0 = torch.empty_like(g_z)
    grads = [g_z.new_empty(K, N, D if w else 1) for w in wide]
    if N and K:
        block_n, block_d = _blocks(N, D)
        getattr(_kernels(), f"{kind}_backward_kernel")[(-(-N // block_n),)](
            g_z, g_ld, *inputs, g0, *grads, _tiny(g_z), N, P, K, *strides, D=D,
            BLOCK_N=block_n, BLOCK_D=block_d)
        launches += 1
    else:
        g0.copy_(g_z)
        for g in grads:
            g.zero_()
    return g0, *[_rows_to(g, P) for g in grads]


def _rows_to(g: Tensor, P: int) -> Tensor:
    """Per-row gradients ``[K, N, n]`` summed to ``P`` parameter rows (row ``r`` used ``r % P``)."""
    K, N, n = g.shape
    if P == N:
        return g
    if P == 1:
        return g.sum(1, keepdim=True)
    return g.view(K, N // P, P, n).sum(1)
