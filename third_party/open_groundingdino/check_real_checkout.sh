#!/usr/bin/env bash
# Run the SurgeryCLIP drop-in inside a real Open-GroundingDino checkout, as
# docs/integrations/open_groundingdino.md tells a user to, with local random
# weights (no hub): a ViT-B-16 OpenAI-layout .pt (plugins.models.testing.
# write_openai_archive) and a tiny BERT folder (tools/make_tiny_bert.py).
# Builds with the host's main.build_model_main, one forward, the host's loss,
# backward and AdamW step on CPU (check_real_checkout.py says what it checks).
# Not part of `make test`: it needs the host checkout from GitHub.
#
# Usage: check_real_checkout.sh OGD_CHECKOUT [PYTHON] [-- extra args of
#        check_real_checkout.py, e.g. --levels 4 --image-size 448 480]
#   PYTHON: an interpreter with the host's requirements.txt (transformers<5),
#           open_clip_torch and torch (default: python3)
#   WORK:   where the weights go (default: a new temporary folder)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
plugins=$(cd "$here/../.." && pwd)
ogd=$(cd "${1:?usage: $0 OGD_CHECKOUT [PYTHON] [-- args]}" && pwd)
shift
py=python3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then py=$1; shift; fi
[ "${1:-}" = "--" ] && shift
work=${WORK:-$(mktemp -d)}
export PYTHONPATH="$plugins:$plugins/third_party${PYTHONPATH:+:$PYTHONPATH}"

echo "host: $ogd @ $(git -C "$ogd" rev-parse HEAD 2>/dev/null || echo '?')"
"$py" - <<EOF
import importlib.metadata as md
print('versions:', ', '.join(f'{p} {md.version(p)}' for p in (
    'torch', 'torchvision', 'transformers', 'tokenizers', 'open_clip_torch',
    'timm')))
EOF
if [ ! -f "$work/ViT-B-16.pt" ]; then
  "$py" - "$work/ViT-B-16.pt" <<'EOF'
import logging, sys, torch, open_clip
from plugins.models.testing import write_openai_archive
logging.getLogger().setLevel(logging.ERROR)  # our random model, on purpose
torch.manual_seed(0)
write_openai_archive(open_clip.create_model('ViT-B-16-quickgelu'), sys.argv[1])
EOF
fi
[ -d "$work/tiny_bert" ] || "$py" "$plugins/tools/make_tiny_bert.py" --out "$work/tiny_bert" >/dev/null 2>&1
placeholder=$("$py" -c 'import torch; print("" if torch.cuda.is_available() else "--cpu-op-placeholder")')
device=$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
cd "$ogd"
exec "$py" "$here/check_real_checkout.py" --ckpt "$work/ViT-B-16.pt" \
  --bert "$work/tiny_bert" --device "$device" $placeholder "$@"
