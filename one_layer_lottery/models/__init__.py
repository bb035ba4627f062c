from .one_layer_transformer import OneLayerTransformerModel  # noqa: F401
