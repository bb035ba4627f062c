"""A found subnetwork outside training: the compact file format and its model codec, export
(compact, expand, dense), analysis and mask statistics."""
