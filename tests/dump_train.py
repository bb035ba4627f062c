"""``fairseq-train`` that, when training ends, saves what THIS process holds: its model state and
every mask (fairseq itself writes checkpoints from rank 0 only).

Usage: ``python dump_train.py <output.pt> <fairseq-train arguments>``. With ``CPU_DDP=1`` in the
environment, ``--ddp-backend pytorch_ddp`` works on CPU too: fairseq passes ``device_ids=[0]``
to torch's DistributedDataParallel, which torch refuses for a CPU module; they are dropped.
"""
import os
import sys

import torch
from fairseq import trainer as fairseq_trainer

_trainers = []
_init = fairseq_trainer.Trainer.__init__


def _remember(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _trainers.append(self)


fairseq_trainer.Trainer.__init__ = _remember

if os.environ.get("CPU_DDP"):
    from fairseq.models import distributed_fairseq_model

    class CpuDistributedDataParallel(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, module, device_ids=None, output_device=None, **kwargs):
            super().__init__(module, **kwargs)

    distributed_fairseq_model.DistributedDataParallel = CpuDistributedDataParallel

if __name__ == "__main__":
    from fairseq_cli.train import cli_main

    from one_layer_lottery.masking import MaskedWeight

    out = sys.argv[1]
    sys.argv = ["fairseq-train", *sys.argv[2:]]
    cli_main()
    trainer = _trainers[-1]
    model = trainer.get_model()
    torch.save({
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "masks": {n: m.mask().cpu() for n, m in model.named_modules() if isinstance(m, MaskedWeight) and m.is_masked},
        "wrapper": type(trainer.model).__name__ + "/" + type(getattr(trainer.model, "module", trainer.model)).__name__,
        "num_updates": trainer.get_num_updates(),
    }, out)
