# Source on the GPU host from the repository root: installs the carried wheels and the plugin.
# Expects .whl/ (bash ../shared/gpu/wheelhouse.sh .whl) and .gpu/kit (a copy of ../shared/gpu).
. .gpu/kit/setup.sh .whl
# The kit installs the plugin once per machine; the checkout goes first on the path so that later
# calls on the same machine run the code they carried (the installed entry points resolve to it).
export PYTHONPATH=$PWD:$PYTHONPATH
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
