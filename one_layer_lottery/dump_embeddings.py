"""``python -m one_layer_lottery.dump_embeddings``: see one_layer_lottery/checkpoints/dump_embeddings.py."""
from .checkpoints.dump_embeddings import DumpError, dump_embeddings, main  # noqa: F401  (also importable from here)

if __name__ == "__main__":
    main()
