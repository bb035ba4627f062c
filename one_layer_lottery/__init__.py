"""one_layer_lottery: the one-layer randomly weighted Transformer as a fairseq plugin.

Use with ``--user-dir path/to/one_layer_lottery``. ``one_layer_lottery.masking`` is pure PyTorch.
"""
from . import safe_load  # noqa: F401  (allow-lists the types fairseq checkpoints hold)
from . import models  # noqa: F401
from . import checkpoint_io  # noqa: F401  (atomic checkpoint copies, see the module)
