"""nerfstudio MethodSpecifications of nerfqat-plugin, named by its entry points."""
