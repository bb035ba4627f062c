"""``python -m one_layer_lottery.average_checkpoints``: see one_layer_lottery/checkpoints/average.py."""
from .checkpoints.average import main

if __name__ == "__main__":
    main()
