# Source on the GPU host from the repository root: installs the carried wheels and the plugin.
# Expects .whl/ (bash ../shared/gpu/wheelhouse.sh .whl) and a copy of ../shared/gpu at $KIT (default .gpu/kit).
. "${KIT:-.gpu/kit}/setup.sh" .whl
# The kit installs the plugin once per machine; the checkout goes first on the path so that later
# calls on the same machine run the code they carried (the installed entry points resolve to it).
export PYTHONPATH=$PWD:$PYTHONPATH
export OUT=${OUT:-/tmp/out}
# LPIPS offline: AlexNet weights converted here with ns-lpips-weights and carried in .gpu/.
if [ -f .gpu/alexnet-lpips.safetensors ]; then export NERFQAT_LPIPS_ALEXNET=$PWD/.gpu/alexnet-lpips.safetensors; fi
mkdir -p "$OUT"
# Rows record the commit the code was run at. The host's copy of the checkout can carry stale git
# metadata (its rows once named an older commit), so a carried .gpu/commit, written before the call
# with `git rev-parse --short HEAD > .gpu/commit`, takes precedence.
if [ -f .gpu/commit ]; then export CODE_COMMIT=$(cat .gpu/commit); fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# nerfacc 0.5.2 (instant-ngp's sampler, built on first use) calls cub::Equality, which CUDA 13's CCCL
# removed; its drop-in replacement is cuda::std::equal_to. Patch the installed source before it builds.
_scan=/tmp/site/nerfacc/cuda/csrc/scan.cu
if [ -f "$_scan" ] && grep -q "cub::Equality" "$_scan"; then
  sed -i 's/cub::Equality()/::cuda::std::equal_to<>()/; s|#include <cub/cub.cuh>|#include <cub/cub.cuh>\n#include <cuda/std/functional>|' "$_scan"
fi
# nerfacc's CUDA extension, built on an earlier GPU host and carried in .gpu/torch_extensions: loaded,
# not rebuilt (a build takes minutes of device time). Its outputs are touched after the sources were
# installed and patched, so that ninja finds them up to date.
if [ -d .gpu/torch_extensions/nerfacc_cuda ]; then
  export TORCH_EXTENSIONS_DIR=$PWD/.gpu/torch_extensions
  touch .gpu/torch_extensions/nerfacc_cuda/*
fi
