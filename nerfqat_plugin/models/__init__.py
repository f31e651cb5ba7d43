"""Models of nerfqat-plugin. Importing this package registers their compressed-file loaders."""

from nerfqat_plugin.models.nerfqat import NeRFQATModel, NeRFQATModelConfig

__all__ = ["NeRFQATModel", "NeRFQATModelConfig"]
