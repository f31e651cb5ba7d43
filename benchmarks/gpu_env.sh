# Source on the GPU host from the repository root: installs the carried wheels and the plugin.
# Expects .whl/ (bash ../shared/gpu/wheelhouse.sh .whl) and .gpu/kit (a copy of ../shared/gpu).
. .gpu/kit/setup.sh .whl
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
