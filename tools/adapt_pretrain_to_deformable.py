"""Convert a baseline ``mm_projector.bin`` (PSALM ``swin_conv``) into an
initialisation for the ``deformable`` projector.

Usage::

    python tools/adapt_pretrain_to_deformable.py IN OUT --projector-outdim 2048
        [--swin-type base] [--mm-hidden-dim 256] [--mm-n-heads 8]
        [--mm-n-points 4] [--mm-num-tokens 256] [--mm-num-layers 2] [--seed 0]

IN is read safely (safetensors or weights-only torch pickle), with or without
the ``model.mm_projector.`` / ``mm_projector.`` prefix.  OUT keeps PSALM's
``mm_projector.`` prefix so ``--pretrain_mm_mlp_adapter OUT`` loads it;
``.safetensors`` or a torch ``.bin`` by extension.  A table of transferred /
newly initialised / dropped keys is printed.

PSALM's ``swin_conv`` keys (``layer1.0.*``, ``fc.*``) are recognised; ``fc``
(2048 -> LLM width) becomes the deformable projector's last output Linear
``output_proj.2``; the BasicBlock has no counterpart and is dropped.

Every refusal is one line on stderr (``error: ...; nothing written``) and
exit code 2, no traceback: IN missing, a folder, unreadable, truncated or
unsafe (a pickle that would run code), a file in another layout, one from
which nothing transfers (e.g. another ``--projector-outdim``), or OUT that
cannot be written.  OUT is written under a temporary name and renamed, so a
refusal or a kill leaves no partial file.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

from plugins.llava.adapt_pretrain import (adapt_swin_conv_state,  # noqa: E402
                                          format_report)
from plugins.utils import (CheckpointError, safe_load,  # noqa: E402
                           save_safetensors)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('input', help='baseline mm_projector.bin')
    parser.add_argument('output', help='.bin or .safetensors to write')
    parser.add_argument('--projector-outdim', type=int, required=True,
                        help='LLM hidden size (2048 Phi-1.5, 2560 Phi-3)')
    parser.add_argument('--swin-type', default='base',
                        choices=['base', 'large'])
    parser.add_argument('--mm-hidden-dim', type=int, default=256)
    parser.add_argument('--mm-n-heads', type=int, default=8)
    parser.add_argument('--mm-n-points', type=int, default=4)
    parser.add_argument('--mm-num-tokens', type=int, default=256)
    parser.add_argument('--mm-num-layers', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def _refuse(message: str) -> int:
    print(f'error: {message}; nothing written', file=sys.stderr)
    return 2


def _save(out: dict, path: str) -> None:
    if path.endswith('.safetensors'):
        save_safetensors(out, path)  # atomic by itself
        return
    tmp = osp.join(osp.dirname(path) or '.',
                   f'.{osp.basename(path)}.tmp-{os.getpid()}')
    try:
        torch.save(out, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = osp.dirname(osp.abspath(args.output))
    if not osp.isdir(folder):
        return _refuse(f'cannot write {args.output}: folder {folder} does '
                       'not exist')
    try:
        state, report = adapt_swin_conv_state(
            safe_load(args.input), projector_outdim=args.projector_outdim,
            swin_type=args.swin_type, mm_hidden_dim=args.mm_hidden_dim,
            mm_n_heads=args.mm_n_heads, mm_n_points=args.mm_n_points,
            mm_num_tokens=args.mm_num_tokens,
            mm_num_layers=args.mm_num_layers, seed=args.seed)
    except (OSError, CheckpointError, ValueError) as err:
        # safe_load's messages name the file already; the others do not.
        message = str(err) if args.input in str(err) else \
            f'{args.input}: {err}'
        return _refuse(message)
    print(format_report(report))
    out = {f'model.mm_projector.{k}': v.contiguous() for k, v in state.items()}
    try:
        _save(out, args.output)
    except (OSError, RuntimeError) as err:  # torch.save raises both
        return _refuse(f'cannot write {args.output} ({err})')
    print(f'wrote {len(out)} tensors to {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
