"""``python -m one_layer_lottery.export``: see one_layer_lottery/subnetwork/export.py."""
import sys

from .subnetwork.export import main

if __name__ == "__main__":
    sys.exit(main())
