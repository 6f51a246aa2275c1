"""``gc.least_squares`` (Gauss-Newton / Levenberg-Marquardt with the residuals' exact
Jacobian, standard errors and information criteria) and ``gc.minimize`` (any loss, its exact
gradient, through ``scipy.optimize.minimize``), both with learned initial states, multiple
shooting and an encoder of initial states."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize

from ..errors import GraphcompError, NotFinite
from ..kernel import Kernel
from .jacobian import Residuals, objective
from .problem import Problem
from .residuals import measured, measured_by_loss

# continuity="exact": the penalty weights tried in turn, each fit starting from the last. A
# small first weight lets every window follow its data (the point of multiple shooting); the
# gaps then close gently: a steeper schedule strands chaotic fits in local minima.
EXACT = tuple(10.0 ** k for k in range(-2, 13))
GAP_TOL = 1e-6   # ... until every gap is below this, relative to 1 + the largest initial value


@dataclass
class Fit:
    """A least-squares fit. ``params`` and ``stderr`` are keyed and shaped like the parameters
    given; ``cov`` = σ̂² (JᵀJ)⁻¹ over the parameters' entries (``names``), σ̂² = RSS / (residuals -
    unknowns); ``initial`` the learned initial states of each sequence (``initial=``'s layout),
    ``window_initial`` every window's {state: (k, W, ...)}; ``report`` scipy's result."""

    params: dict
    stderr: dict
    cov: np.ndarray
    names: list
    sigma2: float
    rss: float
    n_obs: int
    n_unknowns: int
    llf: float
    aic: float
    bic: float
    initial: dict | None
    initial_stderr: dict | None
    window_initial: dict | None
    encoder: dict | None
    max_gap: float
    report: scipy.optimize.OptimizeResult
    jacobian: str
    labels: list = field(repr=False, default_factory=list)
    estimates: np.ndarray = field(repr=False, default=None)
    errors: np.ndarray = field(repr=False, default=None)

    def summary(self, initial: bool = False) -> str:
        """A table in statsmodels' manner: estimate, standard error, z, P>|z| and the 95%
        interval of every parameter entry (and, with ``initial=True``, every learned initial value)."""
        from scipy.stats import norm
        rows = len(self.labels) if initial else len(self.names)
        width = max([10] + [len(s) for s in self.labels[:rows]])
        sigma = f"sigma = {math.sqrt(self.sigma2):.4g}" if np.isfinite(self.sigma2) else "no degrees of freedom left"
        lines = [f"graphcomp least squares: {self.n_obs} residuals, {self.n_unknowns} unknowns, {sigma}",
                 f"RSS = {self.rss:.6g}   log-likelihood = {self.llf:.6g}   AIC = {self.aic:.6g}   BIC = {self.bic:.6g}",
                 f"{self.report.nfev} residual and {self.report.njev} Jacobian evaluations ({self.jacobian} mode): "
                 f"{self.report.message}"]
        if self.window_initial is not None and self.max_gap:
            lines.append(f"largest continuity gap between windows: {self.max_gap:.3g}")
        lines.append(f"{'':{width}} {'estimate':>11} {'std err':>10} {'z':>9} {'P>|z|':>7} {'[0.025':>11} {'0.975]':>11}")
        for label, est, se in zip(self.labels[:rows], self.estimates[:rows], self.errors[:rows]):
            z = est / se if se > 0 else np.inf
            p = 2 * norm.sf(abs(z)) if np.isfinite(z) else np.nan
            lines.append(f"{label:{width}} {est:11.5g} {se:10.4g} {z:9.3f} {p:7.3f} {est - 1.96 * se:11.5g} "
                         f"{est + 1.96 * se:11.5g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class Minimum:
    """A fit by ``gc.minimize``: the parameters, the learned initial states (``initial=``'s
    layout) and every window's, the encoder's parameters, the model's loss (mean per sequence)
    at the optimum, the largest continuity gap and scipy's result (``report``)."""

    params: dict
    initial: dict | None
    window_initial: dict | None
    encoder: dict | None
    loss: float
    max_gap: float
    report: scipy.optimize.OptimizeResult


def _weights(problem: Problem, continuity) -> tuple:
    if not len(problem.pairs):
        return (0.0,)
    return EXACT if continuity == "exact" else (float(continuity),)


def _gap(problem: Problem, x: np.ndarray, gaps: np.ndarray) -> tuple[float, float]:
    """The largest gap and the tolerance it is held to."""
    _, X0, _ = problem.unpack(x)
    return (float(np.abs(gaps).max(initial=0.0)), GAP_TOL * (1 + float(np.abs(X0).max(initial=0.0))))


def _start(problem: Problem, lb: np.ndarray, ub: np.ndarray) -> np.ndarray:
    x = problem.pack()
    outside = (x < lb) | (x > ub)
    if outside.any():
        label = problem.labels()[int(np.argmax(outside))]
        raise GraphcompError(f"the starting value of {label} is outside its bounds; start inside them")
    return x


def least_squares(kernel: Kernel, params: dict, data, lengths=None, *, residuals: list | None = None,
                  learn_initial: bool = False, shooting: int | None = None, continuity="exact",
                  encoder=None, initial: dict | None = None, bounds: dict | None = None,
                  jacobian: str = "auto", method: str = "auto", **options) -> Fit:
    """Fit ``params`` (the starting values) to ``data`` by nonlinear least squares
    (``scipy.optimize.least_squares``) with the residuals' exact Jacobian. ``method``: "lm"
    (MINPACK's Levenberg-Marquardt), "trf" (a trust-region Gauss-Newton that takes bounds) or
    "auto": "lm" unless there are bounds or fewer residuals than unknowns.

    The model's loss must be a sum of squared residuals: ``(pred - y)**2``, ``gc.mse(pred, y)``,
    positive multiples and sums of them; or name the outputs that are the residuals with
    ``residuals=[...]``. ``data``: as ``Trainer.fit`` takes it (padded time-major arrays and
    ``lengths``, or a list of sequences); every sequence is used in one batch.

    ``learn_initial=True`` fits each sequence's initial state (``initial=`` gives the starting
    guess, or the known values when not learned). ``shooting=k`` cuts every sequence into windows
    of k steps, each with its own learned initial state, tied to the end of the window before by
    ``continuity``: a weight w (adds w ‖gap‖² to the sum of squares) or "exact" (weights raised
    in turn until every gap vanishes, so the result is one continuous trajectory per sequence).
    ``encoder=m`` (or ``gc.Encoder(m, hidden=...)``) estimates each window's initial state from
    the m measured steps before it instead. ``bounds`` {parameter: (low, high)}, None for none.
    ``jacobian``: "forward" (the RTRL tangent step), "reverse" (one backward sweep per residual)
    or "auto" (reverse when the unknowns' directions outnumber the residuals). Other keywords
    go to scipy (``x_scale`` defaults to "jac")."""
    problem = Problem(kernel, params, data, lengths, learn_initial=learn_initial, shooting=shooting,
                      encoder=encoder, initial=initial, continuity=continuity)
    res = Residuals(problem, residuals, jacobian)
    problem.start_from(measured(kernel.program, res.nodes))
    lb, ub = problem.bounds(bounds)
    bounded = np.isfinite(lb).any() or np.isfinite(ub).any()
    if method == "auto":
        method = "trf" if bounded or res.n_data + res.n_gaps < problem.n else "lm"
    if method == "lm" and bounded:
        raise GraphcompError("method='lm' (MINPACK) takes no bounds: use method='trf' with bounds")
    if method == "lm" and res.n_data + res.n_gaps < problem.n:
        raise GraphcompError(f"method='lm' needs at least as many residuals ({res.n_data + res.n_gaps}) as unknowns "
                             f"({problem.n}); use method='trf'")
    x = _start(problem, lb, ub)
    if not np.isfinite(res(x)).all():
        raise NotFinite("the model diverges or the residuals are not finite at the starting parameters; "
                        "start from parameters where kernel.forward runs")
    options.setdefault("x_scale", "jac")
    for weight in _weights(problem, continuity):
        res.weight = max(weight, 1e-300)
        report = scipy.optimize.least_squares(res, x, jac=res.jac, bounds=(lb, ub) if bounded else (-np.inf, np.inf),
                                              method=method, **options)
        x = report.x
        gap, tol = _gap(problem, x, res.split(x)[1])
        if gap <= tol:
            break
    if continuity == "exact" and len(problem.pairs) and gap > tol:
        warnings.warn(f"graphcomp: continuity='exact' left a gap of {gap:.3g} between windows", stacklevel=2)
    return _fit(problem, res, x, report, gap, continuity == "exact")


def _fit(problem: Problem, res: Residuals, x: np.ndarray, report, gap: float, exact: bool) -> Fit:
    r, gaps = res.split(x)
    J = res.jac(x)
    n, labels = problem.n, problem.labels()
    rss_data, n_obs = float(r @ r), res.n_data
    if exact and res.n_gaps:
        # exact continuity: the covariance of the constrained problem, on the unknowns' directions
        # that keep every gap closed (the null space of the gaps' Jacobian)
        basis = scipy.linalg.null_space(J[n_obs:] / math.sqrt(res.weight))
        k, rss, A = basis.shape[1], rss_data, J[:n_obs] @ basis
    else:
        basis, k, A = None, n, J
        rss = rss_data + res.weight * float(gaps @ gaps)
    dof = len(A) - k
    sigma2 = rss / dof if dof > 0 else np.nan
    cov = sigma2 * _inverse(A, labels, basis)
    errors = np.sqrt(np.clip(np.diag(cov), 0, None))
    llf = -0.5 * n_obs * (math.log(2 * math.pi) + math.log(max(rss_data, 1e-300) / n_obs) + 1)
    params, X0, enc = problem.unpack(x)
    P = problem.P
    stderr, lo = {}, 0
    for p, shape in problem.shapes.items():
        size = math.prod(shape)
        stderr[p] = errors[lo:lo + size].reshape(shape) if shape else float(errors[lo])
        lo += size
    learned = problem.free.any() or problem.encoder is not None
    initial_se = None
    if problem.free[problem.windows.first].all() and problem.free.any():
        se = np.zeros_like(problem.known)
        se[problem.free] = errors[P:P + int(problem.free.sum()) * problem.K].reshape(-1, problem.K)
        initial_se = problem.user_initial(se)
    return Fit(params=params, stderr=stderr, cov=cov[:P, :P], names=labels[:P], sigma2=sigma2, rss=rss_data,
               n_obs=n_obs, n_unknowns=k, llf=llf, aic=-2 * llf + 2 * k, bic=-2 * llf + k * math.log(n_obs),
               initial=problem.user_initial(X0) if learned else None, initial_stderr=initial_se,
               window_initial=problem.initial(X0) if len(problem.windows) > len(problem.data) else None,
               encoder=enc or None, max_gap=gap, report=report, jacobian=res.mode, labels=labels,
               estimates=x, errors=errors)


def _inverse(A: np.ndarray, labels: list, basis: np.ndarray | None = None) -> np.ndarray:
    """(AᵀA)⁻¹ from the SVD of A, mapped back through ``basis`` (the unknowns are basis @ the
    columns' coordinates) when given; the unknowns the data do not determine (a null direction
    of A touches them) get infinite variance, with a warning that names them."""
    N, m = A.shape
    _, s, Vt = np.linalg.svd(A, full_matrices=N < m)   # Vt: (m, m) either way
    rank = int((s > s.max(initial=0.0) * max(N, m) * np.finfo(float).eps).sum())
    inv = (Vt[:rank].T / s[:rank] ** 2) @ Vt[:rank]
    null = Vt[rank:]
    if basis is not None:
        inv, null = basis @ inv @ basis.T, null @ basis.T
    if len(null):
        bad = np.abs(null).max(axis=0) > 1e-8
        names = [l for l, b in zip(labels, bad) if b]
        warnings.warn(f"graphcomp: the data do not determine {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                      f" ({N} residuals, {m} free directions): their standard errors are infinite", stacklevel=3)
        inv[bad, :] = np.inf
        inv[:, bad] = np.inf
    return inv


def minimize(kernel: Kernel, params: dict, data, lengths=None, *, learn_initial: bool = False,
             shooting: int | None = None, continuity="exact", encoder=None, initial: dict | None = None,
             bounds: dict | None = None, method: str = "L-BFGS-B", **options) -> Minimum:
    """Minimise the model's loss (any loss; mean per sequence over ``data``) by
    ``scipy.optimize.minimize`` (``method``: "L-BFGS-B", "BFGS", "CG", "TNC", ...) with its exact
    gradient by backpropagation through time. ``learn_initial``, ``shooting``, ``continuity``
    (a weight w adds w Σ‖gap‖² to the loss), ``encoder``, ``initial`` and ``bounds`` as in
    ``gc.least_squares``; other keywords go to scipy."""
    problem = Problem(kernel, params, data, lengths, learn_initial=learn_initial, shooting=shooting,
                      encoder=encoder, initial=initial, continuity=continuity)
    if problem.kernel.program.loss is None:
        raise GraphcompError("the model has no loss to minimise: pass loss=... to gc.Recurrence")
    problem.start_from(measured_by_loss(problem.kernel.program))
    lb, ub = problem.bounds(bounds)
    x = _start(problem, lb, ub)
    scale, index = float(len(problem.data)), np.arange(len(problem.windows))
    weight = 0.0

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        p, X0, _ = problem.unpack(x)
        try:
            f, g, gX0 = objective(problem, p, X0, index, weight, scale)
        except NotFinite:
            return np.inf, np.zeros_like(x)
        grad = np.einsum("wk,wkn->n", gX0, problem.initial_columns(x))
        grad[:problem.P] += np.concatenate([np.ravel(g[q]) for q in problem.shapes])
        return f, grad

    if not np.isfinite(fun(x)[0]):
        raise NotFinite("the model diverges or its loss is not finite at the starting parameters; "
                        "start from parameters where kernel.forward runs")
    has_bounds = np.isfinite(lb).any() or np.isfinite(ub).any()
    for weight in _weights(problem, continuity):
        report = scipy.optimize.minimize(fun, x, jac=True, method=method,
                                         bounds=list(zip(lb, ub)) if has_bounds else None, **options)
        x = report.x
        p, X0, enc = problem.unpack(x)
        gap, tol = _gap(problem, x, _gaps(problem, p, X0))
        if gap <= tol:
            break
    p, X0, enc = problem.unpack(x)
    loss = objective(problem, p, X0, index, 0.0, scale)[0]
    learned = problem.free.any() or problem.encoder is not None
    return Minimum(params=p, initial=problem.user_initial(X0) if learned else None,
                   window_initial=problem.initial(X0) if len(problem.windows) > len(problem.data) else None,
                   encoder=enc or None, loss=loss, max_gap=gap, report=report)


def _gaps(problem: Problem, params: dict, X0: np.ndarray) -> np.ndarray:
    if not len(problem.pairs):
        return np.zeros(0)
    init = {**problem.initial(X0), **problem.input_initial}
    states = problem.kernel.forward(params, problem.inputs, problem.windows.length, init)
    return problem.gaps(problem.ends(states, X0), X0)
