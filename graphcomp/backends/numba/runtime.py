"""The runtime every generated kernel uses, as source text: fast elementwise functions
without branches or library calls (so that loops over them vectorize) and the array
operations kernels call instead of containing them. Written to the cache folder as a module
of its own, compiled once per dtype and machine; ``gc.export`` writes it into the exported
module instead, which then needs only NumPy and Numba."""
from __future__ import annotations

import hashlib

RUNTIME = '''_F = np.{dtype}
_SHIFT = _F({shift!r})                       # adding it rounds to an integer kept in the low bits
_SHIFT_BITS = np.{int}(_SHIFT.view(np.{int}))


# Elementwise functions without branches or library calls, so that loops over them vectorize,
# and with one division on their critical path, so that a recurrence through them is fast
# (the rational and polynomial approximations of Cephes; within a few ulp).

@njit(cache=True, error_model="numpy", nogil=True)
def _expk(x):
    """e**x as 2 * h * num / den with h = 2**(k-1), x = k ln2 + r, |r| <= ln2/2 (halved so
    that h is finite wherever e**x is)."""
    x = min(max(_F(x), _F({lo!r})), _F({hi!r}))
    kd = x * _F(1.4426950408889634) + _SHIFT
    k = kd - _SHIFT
    r = x - k * _F({ln2_hi!r}) - k * _F({ln2_lo!r})
{expk}
    h = np.{int}((np.{dtype}(kd).view(np.{int}) - _SHIFT_BITS + {bias} - 1) << {bits}).view(np.{dtype})
    return h, num, den


@njit(cache=True, error_model="numpy", nogil=True)
def _exp(x):
    h, num, den = _expk(x)
    y = (h * (num / den)) * _F(2.0)
    return y if x > _F({lo!r}) else _F(0.0)


@njit(cache=True, error_model="numpy", nogil=True)
def _tanh_small(x):
    """tanh for |x| < 0.625: an odd rational approximation in float64 (a polynomial in float32)."""
    z = x * x
{small}
    return x * p / q


@njit(cache=True, error_model="numpy", nogil=True)
def _tanh(x):
    """The odd approximation for |x| < 0.625, else (e**2|x| - 1) / (e**2|x| + 1). A branch: a
    recurrence of scalars through tanh waits only for the side it takes."""
    x = _F(x)
    a = abs(x)
    if a < _F(0.625):
        return _tanh_small(x)
    h, num, den = _expk(min(_F(2.0) * a, _F(40.0)))
    e = _F(2.0) * h * num
    y = (e - den) / (e + den)
    return y if x >= _F(0.0) else -y


@njit(cache=True, error_model="numpy", nogil=True)
def _sigmoid(x):
    """1 / (1 + e**-x), one division; 1/2 + tanh(x/2)/2 near 0."""
    x = _F(x)
    if abs(x) < _F(1.25):
        return _F(0.5) + _F(0.5) * _tanh_small(_F(0.5) * x)
    h, num, den = _expk(-x)
    return den / (den + _F(2.0) * h * num)


@njit(cache=True, error_model="numpy", nogil=True)
def _vtanh(x):
    """tanh without a branch, for loops over a vector's components: both sides are computed
    and the numerator and denominator chosen before the one division."""
    x = _F(x)
    a = abs(x)
    h, num, den = _expk(min(_F(2.0) * a, _F(40.0)))
    e = _F(2.0) * h * num
    z = x * x
{small}
    small = a < _F(0.625)
    y = (a * p if small else e - den) / (q if small else e + den)
    return y if x >= _F(0.0) else -y


@njit(cache=True, error_model="numpy", nogil=True)
def _vsigmoid(x):
    """1 / (1 + e**-x) without a branch."""
    h, num, den = _expk(-_F(x))
    return den / (den + _F(2.0) * h * num)

# Array operations every kernel uses, compiled once: a kernel calls them (cheap for Numba to
# compile) instead of containing them.

@njit(cache=True, error_model="numpy", nogil=True)
def _mm(a, a0, m, out, o0, rows):
    """out[o0:o0 + rows] = a[a0:a0 + rows] @ m: rows times a weight matrix. Explicit loops,
    vectorized over out's columns, when the product is small (a BLAS call costs more there),
    else BLAS."""
    k = a.shape[1]
    n = m.shape[1]
    if k * n <= 1024 and rows * k * n <= 65536:
        for r in range(rows):
            for j in range(n):
                out[o0 + r, j] = 0.0
            for q in range(k):
                v = a[a0 + r, q]
                for j in range(n):
                    out[o0 + r, j] += v * m[q, j]
    else:
        np.dot(a[a0:a0 + rows], m, out[o0:o0 + rows])


@njit(cache=True, error_model="numpy", nogil=True)
def _mmg(a, index, k, i0, m, out, o0, rows):
    """out[o0:o0 + rows] = a[index[k, i0:i0 + rows]] @ m: the rows of a tree level's k-th
    children, gathered, times a weight matrix."""
    n = m.shape[1]
    if a.shape[1] * n <= 1024:
        for r in range(rows):
            src = index[k, i0 + r]
            for j in range(n):
                out[o0 + r, j] = 0.0
            for q in range(a.shape[1]):
                v = a[src, q]
                for j in range(n):
                    out[o0 + r, j] += v * m[q, j]
    else:
        np.dot(a[index[k, i0:i0 + rows]], m, out[o0:o0 + rows])


@njit(cache=True, error_model="numpy", nogil=True)
def _mtm(a, a0, b, b0, rows, out, coef, beta):
    """out = beta * out + coef * a[a0:a0 + rows]ᵀ b[b0:b0 + rows]: a weight matrix's gradient,
    Σ over rows of outer products."""
    if beta == 0.0 and coef == 1.0:
        np.dot(a[a0:a0 + rows].T, b[b0:b0 + rows], out)
        return
    prod = np.empty_like(out)   # the same np.dot as above: one specialization to compile, not two
    np.dot(a[a0:a0 + rows].T, b[b0:b0 + rows], prod)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = (beta * out[i, j] if beta != 0.0 else 0.0) + coef * prod[i, j]
'''


FAST_MATH = {   # exp's range, the rounding shifter 1.5·2^m, the exponent's bits, ln 2 in two parts
    "float64": dict(lo=-707.0, hi=710.0, shift=6755399441055744.0, int="int64", bits=52, bias=1023,
                    ln2_hi=6.93145751953125E-1, ln2_lo=1.42860682030941723212E-6, expk="""\
    rr = r * r
    p = r * ((_F(1.26177193074810590878E-4) * rr + _F(3.02994407707441961300E-2)) * rr
             + _F(9.99999999999999999910E-1))
    q = (((_F(3.00198505138664455042E-6) * rr + _F(2.52448340349684104192E-3)) * rr
          + _F(2.27265548208155028766E-1)) * rr + _F(2.00000000000000000009E0))
    num, den = q + p, q - p""", small="""\
    q = ((z + _F(1.12811678491632931402E2)) * z + _F(2.23548839060100448583E3)) * z + _F(4.84406305325125486048E3)
    p = q + z * ((_F(-9.64399179425052238628E-1) * z + _F(-9.92877231001918586564E1)) * z
                 + _F(-1.61468768441708447952E3))"""),
    "float32": dict(lo=-86.0, hi=89.0, shift=12582912.0, int="int32", bits=23, bias=127,
                    ln2_hi=0.693359375, ln2_lo=-2.12194440e-4, expk="""\
    rr = r * r
    num = ((((((_F(1.9875691500E-4) * r + _F(1.3981999507E-3)) * r + _F(8.3334519073E-3)) * r
              + _F(4.1665795894E-2)) * r + _F(1.6666665459E-1)) * r + _F(5.0000001201E-1)) * rr
           + r + _F(1.0))
    den = _F(1.0)""", small="""\
    q = _F(1.0)
    p = ((((_F(-5.70498872745E-3) * z + _F(2.06390887954E-2)) * z + _F(-5.37397155531E-2)) * z
          + _F(1.33314422036E-1)) * z + _F(-3.33332819422E-1)) * z + _F(1.0)"""),
}


def runtime_source(dtype: str) -> str:
    """The fast elementwise functions in ``dtype``, as a module of their own: Numba compiles
    them once and caches them for every kernel."""
    imports = "import math\n\nimport numpy as np\nfrom numba import njit\n\n"
    return imports + RUNTIME.format(dtype=dtype, **FAST_MATH[dtype])


def runtime_name(dtype: str) -> str:
    return f"graphcomp_runtime_{hashlib.sha256(runtime_source(dtype).encode()).hexdigest()[:16]}"


def header(dtype: str, standalone: bool = False) -> str:
    """The runtime's functions for a kernel module: imported from the runtime module, or
    written out (``standalone``, for a module that needs only NumPy and Numba)."""
    if standalone:
        return RUNTIME.format(dtype=dtype, **FAST_MATH[dtype])
    return (f"from {runtime_name(dtype)} import (_exp, _mm, _mmg, _mtm, _sigmoid, _tanh,  # noqa: F401\n"
            "                                     _vsigmoid, _vtanh)\n")
