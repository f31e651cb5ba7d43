"""Models of nerfqat-plugin. Importing this package registers their compressed-file codecs."""

from nerfqat_plugin.models.nerfqat import NeRFQATModel, NeRFQATModelConfig
from nerfqat_plugin.models.nerfqat_codec import NeRFQATCodec
from nerfqat_plugin.models.vqad import VQADModel, VQADModelConfig
from nerfqat_plugin.models.vqad_codec import VQADCodec

__all__ = ["NeRFQATCodec", "NeRFQATModel", "NeRFQATModelConfig", "VQADCodec", "VQADModel", "VQADModelConfig"]
