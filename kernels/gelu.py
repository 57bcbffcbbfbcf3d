"""GELU in its three forms: numpy references and the single ONNX node each one becomes.

- exact:   x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))            -> ONNX `Gelu` (opset 20), approximate="none"
- tanh:    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))      -> ONNX `Gelu` (opset 20), approximate="tanh"
- sigmoid: x * sigmoid(1.702 x)                                 -> onnxruntime contrib `QuickGelu`, alpha=1.702

The forms are different functions. A fusion or export must keep the form it was given: turning a tanh
pattern into exact `Gelu` changes the model (see kernels/README.md for the error of each form).
"""

from __future__ import annotations

import math

import numpy as np

GELU_FORMS = ("exact", "tanh", "sigmoid")
SIGMOID_ALPHA = 1.702
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf(x: np.ndarray) -> np.ndarray:
    # numpy has no erf ufunc; math.erf is exact to double precision.
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def gelu_sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / (1.0 + np.exp(-SIGMOID_ALPHA * x))


GELU_REFERENCE = {"exact": gelu_exact, "tanh": gelu_tanh, "sigmoid": gelu_sigmoid}


def check_form(form: str) -> str:
    if form not in GELU_FORMS:
        raise ValueError(f"unknown GELU form {form!r}; expected one of {', '.join(GELU_FORMS)}")
    return form


def max_error_vs_exact(form: str, lo: float = -10.0, hi: float = 10.0, points: int = 200_001) -> float:
    """Max |form(x) - exact(x)| on a dense grid: the table in kernels/README.md comes from here."""
    x = np.linspace(lo, hi, points)
    return float(np.max(np.abs(GELU_REFERENCE[check_form(form)](x) - gelu_exact(x))))


def onnx_node_spec(form: str) -> tuple[str, str, dict]:
    """(op_type, domain, attributes) of the single node that computes `form`."""
    if check_form(form) == "sigmoid":
        return "QuickGelu", "com.microsoft", {"alpha": SIGMOID_ALPHA}
    return "Gelu", "", {"approximate": "none" if form == "exact" else "tanh"}
