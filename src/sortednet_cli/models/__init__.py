"""Model families: sorted networks that follow the protocol in protocol.py.

Adding one: a module that registers its builder with MODELS (and its config schema), its class
with ARCHITECTURES, imported here; and conf/model/<name>.yaml (see docs/architecture.md).
"""

from .protocol import SortedModel
from .registry import ARCHITECTURES, MODELS, build_from_arch, build_model
from . import mobilenetv2, preresnet, text_families  # noqa: F401  (register the built-in families)

__all__ = ["ARCHITECTURES", "MODELS", "SortedModel", "build_from_arch", "build_model"]
