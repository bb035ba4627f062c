"""Let torch's ``weights_only=True`` loader read fairseq checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq checkpoints hold a few
non-tensor Python objects (an ``argparse.Namespace`` in old ones, numpy scalars in the
training state). Exactly those types are allow-listed here; nothing else becomes loadable,
so a checkpoint crafted to run code on load is still refused.
"""
import argparse
import collections

import numpy as np
import torch


def _numpy_types():
    types = [np.dtype, np.ndarray]
    try:  # numpy >= 1.25 / 2.x
        from numpy.core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover
        from numpy._core.multiarray import _reconstruct, scalar
    types += [scalar, _reconstruct]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        types += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                               "BoolDType") if hasattr(dtypes, n)]
    return types


SAFE_GLOBALS = [argparse.Namespace, collections.OrderedDict, *_numpy_types()]
torch.serialization.add_safe_globals(SAFE_GLOBALS)
