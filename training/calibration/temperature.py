"""Temperature scaling (Guo et al. 2017): the one T > 0 that minimises the held-out NLL of
``softmax(log(p) / T)``.

The transform is ``service.calibration.apply_temperature`` -- the function the service applies
-- so the fitted T is right for what is served. The 1-D minimisation is SciPy's bounded Brent
search on log T (scikit-learn, in the train extra, already brings SciPy).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from service.calibration import apply_temperature, nll

T_RANGE = (0.05, 20.0)  # searched on a log scale; a fit at either end is reported as such


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The NLL-minimising temperature of (N, C) probabilities against class indices."""
    probs = np.asarray(probs, dtype=np.float32)
    labels = np.asarray(labels)

    def loss(log_t: float) -> float:
        return nll(apply_temperature(probs, math.exp(log_t)), labels)

    result = minimize_scalar(loss, bounds=tuple(math.log(t) for t in T_RANGE), method="bounded",
                             options={"xatol": 1e-4})
    return float(math.exp(result.x))
