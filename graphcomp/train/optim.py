"""Optimizers and learning-rate schedules for ``gc.Trainer``. Each optimizer updates the
parameters in place with a compiled (Numba) loop per parameter array; its rules follow
``torch.optim`` (weight decay added to the gradient, Adam's bias correction, ...), so that
results can be compared with PyTorch's."""
from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
from numba import njit

from ..errors import GraphcompError, is_count

Schedule = Callable[[int], float]
Rate = Union[float, Schedule]


# ---------------------------------------------------------------- schedules (step -> lr)

def step_decay(lr: float, every: int, gamma: float = 0.1) -> Schedule:
    """lr · gamma^(step // every): drop by ``gamma`` every ``every`` updates."""
    _positive(every=every)
    return lambda step: lr * gamma ** (step // every)


def cosine(lr: float, steps: int, min_lr: float = 0.0) -> Schedule:
    """From lr down to min_lr along half a cosine over ``steps`` updates, then min_lr."""
    _positive(steps=steps)
    return lambda step: min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def warmup(base: Rate, steps: int) -> Schedule:
    """Linear warm-up: base(step) · (step + 1) / steps for the first ``steps`` updates."""
    _positive(steps=steps)
    rate = _as_schedule(base)
    return lambda step: rate(step) * min(1.0, (step + 1) / steps)


def _as_schedule(lr: Rate) -> Schedule:
    if callable(lr):
        return lr
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise GraphcompError(f"a learning rate must be a positive number or a schedule step -> lr, got {lr!r}")
    return lambda step: float(lr)


def _positive(**values) -> None:
    for name, v in values.items():
        if not is_count(v):
            raise GraphcompError(f"{name} must be a positive integer, got {v!r}")


# ---------------------------------------------------------------- compiled updates (1-D views)
# Each rule is rule(p, g, *slots, lr, h, step): the parameter, its gradient and its slots as
# 1-D arrays, the rate, the optimizer's hyperparameters h (a float array) and the number of
# earlier updates; the trainer's compiled epoch calls them the same way.

@njit(cache=True, error_model="numpy")
def _sgd(p, g, buf, lr, h, step):
    momentum, dampening, nesterov, decay = h[0], h[1], h[2] != 0.0, h[3]
    for i in range(p.size):
        d = g[i] + decay * p[i]
        if momentum != 0.0:
            buf[i] = d if step == 0 else momentum * buf[i] + (1.0 - dampening) * d
            d = d + momentum * buf[i] if nesterov else buf[i]
        p[i] -= lr * d


@njit(cache=True, error_model="numpy")
def _adam(p, g, m, v, lr, h, step):
    beta1, beta2, eps, decay, decoupled = h[0], h[1], h[2], h[3], h[4] != 0.0
    c1, c2 = 1.0 - beta1 ** (step + 1), 1.0 - beta2 ** (step + 1)
    for i in range(p.size):
        d = g[i]
        if decoupled:
            p[i] *= 1.0 - lr * decay
        else:
            d += decay * p[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * d
        v[i] = beta2 * v[i] + (1.0 - beta2) * d * d
        p[i] -= lr * (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)


@njit(cache=True, error_model="numpy")
def _rmsprop(p, g, v, lr, h, step):
    alpha, eps, decay = h[0], h[1], h[2]
    for i in range(p.size):
        d = g[i] + decay * p[i]
        v[i] = alpha * v[i] + (1.0 - alpha) * d * d
        p[i] -= lr * d / (math.sqrt(v[i]) + eps)


@njit(cache=True, error_model="numpy")
def _adagrad(p, g, s, lr, h, step):
    eps, decay = h[0], h[1]
    for i in range(p.size):
        d = g[i] + decay * p[i]
        s[i] += d * d
        p[i] -= lr * d / (math.sqrt(s[i]) + eps)


# ---------------------------------------------------------------- optimizers

class Optimizer:
    """Per-parameter state (``slots``) and an in-place update. ``lr`` is a number or a
    schedule step -> lr (``step`` counts updates from 0).

    ``gc.Trainer`` drives it; a custom training loop calls the same two methods::

        opt = gc.optim.Adam(1e-2)
        params = {p: np.array(v, np.float64) for p, v in model.init_params().items()}
        state = opt.init(params)                     # {param: {slot: zeros}}
        for step in range(100):
            loss, grads = kernel.loss_and_grad(params, data)
            gc.optim.clip(grads, norm=1.0)           # optional, in place
            opt.update(params, grads, state, step)   # params and state change in place

    The updates are torch.optim's, so ``step`` must count the updates made so far (Adam's
    bias correction and schedules read it)."""
    slots: tuple = ()
    hyper_names: tuple = ()   # the attributes the compiled rule reads, in its order

    def __init__(self, lr: Rate, weight_decay: float = 0.0):
        self.rate = _as_schedule(lr)
        if not weight_decay >= 0:
            raise GraphcompError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.weight_decay = float(weight_decay)

    def init(self, params: dict) -> dict:
        """The optimizer's state for ``params``: zeroed slots (momentum, Adam's moments, ...)
        for every parameter, {name: {slot: float64 array of the parameter's shape}}. Pass it
        to every ``update``; it is what ``Trainer.save`` writes."""
        return {p: {s: np.zeros(np.shape(v)) for s in self.slots} for p, v in params.items()}

    def update(self, params: dict, grads: dict, state: dict, step: int) -> None:
        """One update, in place, of every parameter named in ``grads`` (the others stay):
        ``params[name]`` must be a writable, C-contiguous float64 NumPy array (a 0-d array
        for a scalar) and ``state`` the dict ``init`` returned for it. ``step`` is the number
        of earlier updates (0 for the first). Returns nothing: read ``params``."""
        lr, h = self.rate(step), self.hyper()
        for name, g in grads.items():
            p = params.get(name)
            if not (isinstance(p, np.ndarray) and p.dtype == np.float64 and p.flags.c_contiguous and p.flags.writeable):
                what = type(p).__name__ if not isinstance(p, np.ndarray) else \
                    f"a {p.dtype} array{'' if p.flags.c_contiguous else ', not C-contiguous'}"
                raise GraphcompError(f"update changes params in place, but params[{name!r}] is {what}: give "
                                     f"np.array(value, np.float64) (a 0-d array for a scalar)")
            if name not in state:
                raise GraphcompError(f"the optimizer state has no slots for {name!r}: call "
                                     f"state = optimizer.init(params) with the parameters you update")
            slots = [state[name][s].reshape(-1) for s in self.slots]
            self.rule(params[name].reshape(-1), np.asarray(g, np.float64).reshape(-1), *slots, lr, h, step)

    def hyper(self) -> np.ndarray:
        """The hyperparameters the compiled rule reads (``h``): the attributes ``hyper_names``."""
        return np.hstack([getattr(self, n) for n in self.hyper_names]).astype(np.float64)

    def config(self) -> dict:
        """What identifies this optimizer in a checkpoint."""
        return {"name": type(self).__name__, "weight_decay": self.weight_decay}


class SGD(Optimizer):
    """p -= lr · d, with d = g + wd·p, or the momentum buffer b = μ b + (1 - dampening) d
    (Nesterov: d + μ b)."""
    slots = ("momentum",)

    def __init__(self, lr: Rate, momentum: float = 0.0, nesterov: bool = False, dampening: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise GraphcompError("Nesterov momentum needs momentum > 0 and dampening = 0")
        self.momentum, self.nesterov, self.dampening = float(momentum), bool(nesterov), float(dampening)

    rule = staticmethod(_sgd)
    hyper_names = ("momentum", "dampening", "nesterov", "weight_decay")


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``decoupled=True`` is AdamW (the decay
    shrinks the parameter instead of entering the gradient)."""
    slots = ("m", "v")

    def __init__(self, lr: Rate = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(lr, weight_decay)
        if not all(0 <= b < 1 for b in betas):
            raise GraphcompError(f"Adam's betas must lie in [0, 1), got {betas!r}")
        self.betas, self.eps, self.decoupled = tuple(map(float, betas)), float(eps), bool(decoupled)

    rule = staticmethod(_adam)
    hyper_names = ("betas", "eps", "weight_decay", "decoupled")


class RMSProp(Optimizer):
    """v = α v + (1 - α) d², p -= lr · d / (√v + eps)."""
    slots = ("v",)

    def __init__(self, lr: Rate = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.alpha, self.eps = float(alpha), float(eps)

    rule = staticmethod(_rmsprop)
    hyper_names = ("alpha", "eps", "weight_decay")


class AdaGrad(Optimizer):
    """s += d², p -= lr · d / (√s + eps)."""
    slots = ("sum",)

    def __init__(self, lr: Rate = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        self.eps = float(eps)

    rule = staticmethod(_adagrad)
    hyper_names = ("eps", "weight_decay")


def clip(grads: dict, norm: float | None = None, value: float | None = None) -> float:
    """Clip ``grads`` in place: each component to [-value, value], then the whole set to a
    global L2 norm of at most ``norm``. Returns the global norm before norm clipping."""
    if value is not None:
        for g in grads.values():
            np.clip(g, -value, value, out=g)
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if norm is not None and total > norm:
        for g in grads.values():
            g *= norm / total
    return total
