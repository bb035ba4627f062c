"""A found subnetwork outside training: the compact file format and its model codec, the dense
equivalent, mask figures. The tools over them: export.py, analyze.py."""
