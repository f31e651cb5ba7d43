"""Models of nerfqat-plugin. Importing this package registers their compressed-file loaders."""

from nerfqat_plugin.models.nerfqat import NeRFQATModel, NeRFQATModelConfig
from nerfqat_plugin.models.vqad import VQADModel, VQADModelConfig

__all__ = ["NeRFQATModel", "NeRFQATModelConfig", "VQADModel", "VQADModelConfig"]
