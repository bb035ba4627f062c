"""``python -m one_layer_lottery.analyze``: see one_layer_lottery/subnetwork/analyze.py."""
import sys

from .subnetwork.analyze import main

if __name__ == "__main__":
    sys.exit(main())
