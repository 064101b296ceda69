"""Convert a CLIP checkpoint in any supported format to ``.safetensors``.

Reads (without executing code from the file) ``.safetensors``, torch
pickles (``open_clip_pytorch_model.bin``, ``.pth``, training checkpoints
with ``state_dict``/``model`` containers, DDP ``module.`` prefixes) and
OpenAI CLIP TorchScript archives (``ViT-B-32.pt``), optionally renames
keys, and writes a flat safetensors state dict.  With ``--model-name`` the
keys are mapped to that open_clip model's layout and checked strictly.

OpenAI's files say by their layout that they were trained with QuickGELU;
the conversion drops the metadata tensors that say it, so the output
records it in its header (``activation``), where the loaders read it: a
converted OpenAI file is refused by a GELU model as the original is.  With
``--model-name`` a model of the other activation is refused at once.

Usage::

    python tools/convert_clip_checkpoint.py IN OUT.safetensors \\
        [--model-name ViT-B-16-quickgelu] [--key state_dict_ema] \\
        [--strip-prefix backbone.] [--add-prefix visual.] \\
        [--rename 'REGEX=REPLACEMENT' ...] [--dtype float32]

``IN`` may be a model folder (e.g. the downloaded BiomedCLIP folder).
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DTYPES = {
    'keep': None,
    'float32': torch.float32,
    'float16': torch.float16,
    'bfloat16': torch.bfloat16
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n', 1)[1])
    parser.add_argument('input', help='weights file or model folder')
    parser.add_argument('output', help='output .safetensors file')
    parser.add_argument(
        '--model-name',
        help='open_clip model whose key '
        'layout the output must match (strict check)')
    parser.add_argument(
        '--key',
        help='container entry holding the weights '
        '(default: state_dict/model/... when present)')
    parser.add_argument(
        '--strip-prefix',
        default='',
        help='keep only keys under this prefix, stripped')
    parser.add_argument(
        '--add-prefix', default='', help='prepend this to every key')
    parser.add_argument(
        '--rename',
        action='append',
        default=[],
        metavar='REGEX=REPL',
        help='regex key renaming, '
        'applied in order (repeatable)')
    parser.add_argument(
        '--dtype',
        choices=sorted(DTYPES),
        default='keep',
        help='cast floating-point tensors (OpenAI archives '
        'are float16)')
    parser.add_argument(
        '--no-strict',
        action='store_true',
        help='with --model-name: write even if keys differ')
    return parser.parse_args(argv)


def convert(args) -> Tuple[dict, Optional[str]]:
    """``(state, activation)``: the converted state dict and the activation
    its source says it was trained with (None: not said)."""
    from plugins.models.weights import (check_activation,
                                        convert_to_open_clip,
                                        find_weights_file,
                                        is_openai_state_dict,
                                        recorded_activation,
                                        strip_openai_metadata,
                                        weights_layout)
    from plugins.utils import (add_prefix, check_state_dict, rename_keys,
                               safe_load, select_prefix)

    path = find_weights_file(args.input)
    state = safe_load(path, key=args.key)
    layout = 'OpenAI' if is_openai_state_dict(state) else 'open_clip/other'
    said, activation = weights_layout(state, recorded_activation(path))
    if args.strip_prefix:
        state = select_prefix(state, args.strip_prefix)
    if args.rename:
        rules = []
        for rule in args.rename:
            if '=' not in rule:
                raise SystemExit(f"--rename '{rule}' must be REGEX=REPL")
            rules.append(tuple(rule.split('=', 1)))
        state = rename_keys(state, rules)
    if args.add_prefix:
        state = add_prefix(state, args.add_prefix)
    if args.model_name:
        from plugins.models import activation_fix, create_model
        model = create_model(args.model_name, device='meta')
        if activation is not None:
            check_activation(
                model, activation, said, source=str(path),
                fix=activation_fix(args.model_name, activation == 'quick_gelu',
                                   name_key='--model-name', flag_key=None))
        state = convert_to_open_clip(state, model)
        if not args.no_strict:
            check_state_dict(
                model.state_dict(),
                state,
                source=str(path),
                target=args.model_name,
                hint='adjust with --strip-prefix/--add-prefix/'
                '--rename, or choose another --model-name')
    else:
        state = strip_openai_metadata(state)
    dtype = DTYPES[args.dtype]
    if dtype is not None:
        state = {
            k: v.to(dtype) if v.is_floating_point() else v
            for k, v in state.items()
        }
    print(f'{path}: {len(state)} tensors ({layout} layout'
          + (f', trained with {activation})' if activation else ')'))
    return state, activation


def main(argv=None) -> int:
    from plugins.models.weights import (ACTIVATION_METADATA_KEY,
                                        ActivationMismatchError)
    from plugins.utils import (CheckpointError, StateDictMismatchError,
                               save_safetensors)
    args = parse_args(argv)
    out = Path(args.output)
    if out.suffix != '.safetensors':
        print(
            f'error: output must end in .safetensors: {out}', file=sys.stderr)
        return 2
    try:
        state, activation = convert(args)
    except (CheckpointError, StateDictMismatchError, FileNotFoundError,
            KeyError, ActivationMismatchError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {'format': 'pt', 'source': Path(args.input).name}
    if args.model_name:
        meta['model_name'] = args.model_name
    if activation is not None:
        meta[ACTIVATION_METADATA_KEY] = activation
    save_safetensors(state, out, metadata=meta)
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
