"""Let nerfstudio checkpoints load under torch >= 2.6's safe (``weights_only``) unpickling.

nerfstudio 1.1.5 checkpoints hold a few numpy scalars (learning-rate scheduler state), which the
safe unpickler refuses by default. Rather than switching safe loading off globally, the exact
numpy types involved are added to torch's allow-list: the checkpoint can still not run code.
"""

from __future__ import annotations

import numpy as np
import torch


def numpy_scalar_safe_globals() -> list:
    """The numpy callables and types a pickled numpy scalar refers to."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_types = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [scalar, np.dtype, *dtype_types]


def allow_numpy_scalars_in_checkpoints() -> None:
    """Register :func:`numpy_scalar_safe_globals` with torch's weights-only unpickler."""
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:  # torch < 2.4 has no allow-list (and does not need one)
        add(numpy_scalar_safe_globals())
