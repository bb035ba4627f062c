"""one_layer_lottery: the one-layer randomly weighted Transformer as a fairseq plugin.

Use with ``--user-dir path/to/one_layer_lottery``. Importing it registers the model with fairseq;
fairseq's command lines also get the changes listed in fairseq_patches.py, and no other program
does. ``one_layer_lottery.masking`` is pure PyTorch.
"""
from . import fairseq_patches

with fairseq_patches.quiet_fairseq_import():
    from . import models  # noqa: F401  (registers one_layer_transformer and its architectures)

if fairseq_patches.running_fairseq_cli():
    from .model_files import check_checkpoint_file

    fairseq_patches.patch_fairseq_cli(check_checkpoint_file)
