"""one_layer_lottery: the one-layer randomly weighted Transformer as a fairseq plugin.

Use with ``--user-dir path/to/one_layer_lottery``. ``one_layer_lottery.masking`` is pure PyTorch.
"""
from . import console  # first: it quiets a line fairseq logs when imported
from .checkpoints import fairseq_copy, safe_load  # noqa: F401  (atomic checkpoint copies; weights_only allow-list)
from . import models  # noqa: F401

console.report_tool_errors_of_fairseq_clis()
