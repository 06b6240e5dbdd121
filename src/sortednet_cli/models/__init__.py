"""Model families: sorted networks that follow the protocol in protocol.py, each registered
once as a ModelFamily (registry.py).

Adding one: a module that builds the network and calls `register_family(ModelFamily(...))`,
imported here; and conf/model/<name>.yaml (see docs/architecture.md).
"""

from .protocol import SortedModel
from .registry import FAMILIES, ModelFamily, TextProfile, build_from_arch, build_model, families_for, family_named, family_of, register_family
from . import mobilenetv2, preresnet, resnet, text_families  # noqa: F401  (register the built-in families)

__all__ = ["FAMILIES", "ModelFamily", "SortedModel", "TextProfile", "build_from_arch", "build_model", "families_for", "family_named",
           "family_of", "register_family"]
