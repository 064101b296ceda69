#!/usr/bin/env bash
# Apply the deformable-projector drop-in to a real PSALM checkout and run
# PSALM's builder, model construction (tiny random Phi), adapter loading and
# encode_images with it (check_real_checkout.py says what it checks); no hub,
# no weights files. Not part of `make test`: it needs the PSALM checkout
# (GitHub) and an environment where PSALM imports (detectron2 built from
# source; see "Tried in a real checkout" in docs/integrations/psalm.md).
#
# Usage: check_real_checkout.sh PSALM_CHECKOUT [PYTHON [args of check_real_checkout.py]]
#   PYTHON: PSALM's environment (default: python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
plugins=$(cd "$here/../.." && pwd)
psalm=$(cd "${1:?usage: $0 PSALM_CHECKOUT [PYTHON] [args]}" && pwd)
py=${2:-python3}
shift $(( $# < 2 ? $# : 2 ))
export PYTHONPATH="$plugins:$here${PYTHONPATH:+:$PYTHONPATH}"

echo "host: $psalm @ $(git -C "$psalm" rev-parse HEAD 2>/dev/null || echo '?')"
"$py" - <<'PY'
import importlib.metadata as md
names = ('torch', 'torchvision', 'transformers', 'tokenizers', 'numpy',
         'timm', 'deepspeed', 'accelerate', 'detectron2', 'fvcore', 'addict',
         'opencv-python', 'bitsandbytes')
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return '-'
print('versions:', ', '.join(f'{n} {version(n)}' for n in names))
PY
placeholder=$("$py" -c 'import torch; print("" if torch.cuda.is_available() else "--cpu-op-placeholder")')
cd "$psalm"
exec "$py" "$here/check_real_checkout.py" $placeholder "$@"
