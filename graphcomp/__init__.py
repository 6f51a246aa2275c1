"""graphcomp: a compiler for recurrences.

Write the step of a recurrent system as sympy equations; graphcomp unfolds it into a DAG,
derives the gradient by reverse mode over that graph (backpropagation through time) and
runs it in compiled kernels."""
from .lang.declare import (child, concat, cross_entropy, elementwise, exp, hadamard, log, mse, ones,
                           over_children, param, relu, sigmoid, signal, t, tanh)
from .errors import GraphcompError
from .forecast.generate import generate
from .forecast.predict import predict, simulate
from .forecast import metrics
from .forecast.plot import plot_forecast
from .fit import Encoder, Fit, Minimum, least_squares, minimize
from .kernel import Kernel, compile, export
from . import models
from .lang.recurrence import Recurrence
from .train import optim
from .grad import rtrl
from .train.trainer import History, Trainer
from .train.trees import Trees, trees
from . import scale

__version__ = "0.1.0"

__all__ = ["t", "signal", "param", "Recurrence", "compile", "export", "Kernel", "GraphcompError", "tanh",
           "sigmoid", "relu", "exp", "log", "elementwise", "hadamard", "concat", "mse",
           "cross_entropy", "ones", "child", "over_children", "models", "optim", "rtrl", "Trainer", "History", "Trees", "trees",
           "generate", "simulate", "predict", "metrics", "plot_forecast", "least_squares", "minimize", "Fit",
           "Minimum", "Encoder", "scale"]
