from .config import ARCHITECTURES, OneLayerTransformerConfig  # noqa: F401
from .model import MODEL_NAME, OneLayerTransformerModel  # noqa: F401
