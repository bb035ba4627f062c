"""Tools over fairseq checkpoints: averaging, and dumping a dense model's embeddings."""
