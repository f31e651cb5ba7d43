"""nerfqat-plugin: compressed radiance fields (nerf-qat, vqad) for nerfstudio.

Importing the package (nerfstudio does, through the entry points) reports user-input errors
without tracebacks and lets nerfstudio checkpoints load under torch's safe unpickling.
"""

from nerfqat_plugin.checkpoints import allow_numpy_scalars_in_checkpoints
from nerfqat_plugin.errors import install_excepthook

__version__ = "0.1.0"

install_excepthook()
allow_numpy_scalars_in_checkpoints()
