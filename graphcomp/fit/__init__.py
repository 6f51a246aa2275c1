"""Fitting a model to measured sequences as system identification does it: nonlinear least
squares with the residuals' exact Jacobian and standard errors (``least_squares``), any loss
by a quasi-Newton method with its exact gradient (``minimize``), learned initial states,
multiple shooting and an encoder of initial states (``problem``), shared with the Trainer.

It owns: recognising the residuals of a sum-of-squares loss (``residuals``), the unknowns'
layout and the windows (``problem``), the residuals' Jacobian by forward mode (the RTRL
tangent step) or reverse mode and the loss's gradient (``jacobian``), the fitters and their
reports (``fitters``), and the Trainer's epochs over windows (``train``)."""
from .fitters import Fit, Minimum, least_squares, minimize
from .problem import Encoder

__all__ = ["least_squares", "minimize", "Fit", "Minimum", "Encoder"]
