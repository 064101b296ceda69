"""Build and train one step of Open-GroundingDino with ``backbone =
"surgeryclip"`` inside a real Open-GroundingDino checkout, as
``docs/integrations/open_groundingdino.md`` tells a user to.

Run from the checkout (``check_real_checkout.sh`` does it)::

    cd /path/to/Open-GroundingDino
    PYTHONPATH=$PLUGINS:$PLUGINS/third_party python \\
        $PLUGINS/third_party/open_groundingdino/check_real_checkout.py \\
        --ckpt ViT-B-16.pt --bert /path/to/bert_folder [--levels 1|4]

What it does, in the host's own order (``main.py``): imports ``main`` (its
top-level imports), ``open_groundingdino.apply()``, reads a copy of
``config/cfg_odvg.py`` with the doc's step-2 lines appended through the
host's ``SLConfig`` and merges it into ``main.get_args_parser()``'s
namespace as ``main.main`` does, builds with ``main.build_model_main``,
then one forward, the host's ``SetCriterion`` loss, backward and an AdamW
step over ``util.get_param_dicts.get_param_dict`` on two random images of
different sizes (padding) and an ODVG-style caption. Fails (exit 1) if the
backbone is not ours, a frozen backbone parameter moved, or a loss is not
finite. Not part of ``make test``: it needs the host checkout (GitHub).

On a machine without CUDA, Open-GroundingDino does not import: its
``ms_deform_attn.py`` raises unless the compiled
``MultiScaleDeformableAttention`` imports, and that op does not build
without CUDA (``ops/setup.py`` raises ``NotImplementedError``; its CPU
source includes CUDA headers). Its CPU forward never calls the op (it takes
``multi_scale_deformable_attn_pytorch`` unless ``value.is_cuda``), so with
``--cpu-op-placeholder`` a module of that name whose two functions raise,
as the compiled op's CPU entry points do, is put on ``sys.path`` when the
real one is missing.
"""
import argparse
import os
import sys
import tempfile
import time

PLACEHOLDER = '''"""Placeholder for Open-GroundingDino's compiled op on a machine
without CUDA (written by plugins' check_real_checkout.py): its functions
raise, as the op's CPU entry points do ("Not implemented on the CPU")."""


def ms_deform_attn_forward(*args, **kwargs):
    raise RuntimeError('MultiScaleDeformableAttention: not implemented on '
                       'the CPU (placeholder, no compiled op)')


ms_deform_attn_backward = ms_deform_attn_forward
'''


def config_lines(ckpt: str, bert: str, levels: int, train_last: int,
                 backbone: str = 'surgeryclip') -> str:
    """The doc's step 2, plus the local text encoder (no hub) and the
    categories (no COCO annotation file). Another ``backbone`` (a stock one,
    for comparison) keeps the config's own settings."""
    lines = [
        'backbone = "surgeryclip"',
        f'surgeryclip_ckpt = {ckpt or None!r}',
        f'train_surgeryclip_backbone = {train_last > 0}',
        f'surgeryclip_train_last_n_blocks = {train_last or None}',
        'return_interm_indices = [3]',
    ] if backbone == 'surgeryclip' else [f'backbone = {backbone!r}']
    lines += [
        f'text_encoder_type = {bert!r}',
        # main.main reads coco_val_path from the datasets json; without a
        # dataset, PostProcess takes its categories from label_list
        'use_coco_eval = False',
        "label_list = ['circle', 'square']",
    ]
    if levels == 1 and backbone == 'surgeryclip':
        lines += ['num_feature_levels = 1', 'two_stage_type = "no"']
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--ckpt', required=True,
                   help="OpenAI ViT-B-16.pt ('' : none, random weights)")
    p.add_argument('--bert', required=True,
                   help='local BERT folder for text_encoder_type')
    p.add_argument('--levels', type=int, choices=(1, 4), default=1)
    p.add_argument('--train-last', type=int, default=0,
                   help='train the backbone\'s last n blocks (0: frozen)')
    p.add_argument('--cpu-op-placeholder', action='store_true')
    p.add_argument('--backbone', default='surgeryclip',
                   help="a stock one (e.g. 'swin_T_224_1k', random weights) "
                   'runs the same steps for comparison')
    p.add_argument('--device', default='cpu')
    p.add_argument('--image-size', type=int, nargs=2, default=(224, 256),
                   metavar=('H', 'W'),
                   help='first image; the second is 32 px smaller. With '
                   '--levels 4 (two-stage) the encoder needs >= num_queries '
                   '(900) tokens: use 448 480')
    a = p.parse_args(argv)

    sys.path.insert(0, os.getcwd())  # the checkout, as `python main.py` has
    tmp = tempfile.mkdtemp(prefix='ogd_check_')
    import importlib.util
    if a.cpu_op_placeholder and \
            importlib.util.find_spec('MultiScaleDeformableAttention') is None:
        with open(os.path.join(tmp, 'MultiScaleDeformableAttention.py'),
                  'w') as f:
            f.write(PLACEHOLDER)
        sys.path.append(tmp)
        print('[check] no compiled MultiScaleDeformableAttention: placeholder '
              'on sys.path (CPU path only)', flush=True)

    import torch
    print(f'[check] torch {torch.__version__}; importing main.py', flush=True)
    import main as host_main  # Open-GroundingDino's main.py (its imports)
    from util.get_param_dicts import get_param_dict
    from util.misc import nested_tensor_from_tensor_list
    from util.slconfig import SLConfig

    print('[check] open_groundingdino.apply()', flush=True)
    import open_groundingdino
    print('[check] apply() ->', open_groundingdino.apply(), flush=True)

    cfg_path = os.path.join(tmp, 'cfg_surgeryclip.py')
    with open('config/cfg_odvg.py') as f:
        base = f.read()
    with open(cfg_path, 'w') as f:
        f.write(base + '\n' +
                config_lines(a.ckpt, a.bert, a.levels, a.train_last,
                             a.backbone))
    args = host_main.get_args_parser().parse_args(
        ['-c', cfg_path, '--datasets', 'unused.json', '--device', a.device])
    cfg = SLConfig.fromfile(cfg_path)
    for k, v in cfg._cfg_dict.to_dict().items():  # as main.main merges
        if hasattr(args, k):
            raise ValueError(f'Key {k} can used by args only')
        setattr(args, k, v)

    print('[check] ---- build_model_main(args): everything below until '
          '"[check] built" is what the host prints ----', flush=True)
    t0 = time.time()
    torch.manual_seed(0)
    model, criterion, _ = host_main.build_model_main(args)
    model.to(a.device)
    print(f'[check] built in {time.time() - t0:.1f}s', flush=True)

    backbone = model.backbone[0]
    if a.backbone == 'surgeryclip' and \
            type(backbone).__name__ != 'SurgeryCLIPGroundingBackbone':
        print(f'[check] FAIL: the backbone is {type(backbone).__name__}')
        return 1
    trainable = [n for n, q in model.named_parameters()
                 if q.requires_grad and n.startswith('backbone.0.')]
    print(f'[check] backbone: {type(backbone).__name__}, num_channels '
          f'{model.backbone.num_channels}, {len(trainable)} trainable '
          'backbone tensors', flush=True)
    param_dicts = get_param_dict(args, model)  # then freeze, as main does
    for n, q in model.named_parameters():
        if any(k in n for k in args.freeze_keywords or ()):
            q.requires_grad_(False)
    frozen = {n: q.detach().clone() for n, q in model.named_parameters()
              if n.startswith('backbone.0.') and not q.requires_grad}

    # two images of different sizes: the host pads them into one batch
    torch.manual_seed(1)
    h, w = a.image_size
    images = [torch.randn(3, h, w), torch.randn(3, h - 32, w - 32)]
    samples = nested_tensor_from_tensor_list(images).to(a.device)
    cap_list = [['circle', 'square'], ['circle']]
    captions = ['circle . square .', 'circle .']
    targets = [
        dict(labels=torch.tensor([0, 1]),
             boxes=torch.tensor([[.3, .3, .2, .2], [.7, .6, .3, .4]])),
        dict(labels=torch.tensor([0]), boxes=torch.tensor([[.5, .5, .4,
                                                            .4]])),
    ]
    targets = [{k: v.to(a.device) for k, v in t.items()} for t in targets]
    model.train()
    criterion.train()
    optimizer = torch.optim.AdamW(param_dicts, lr=args.lr,
                                  weight_decay=args.weight_decay)
    t0 = time.time()
    outputs = model(samples, captions=captions)
    loss_dict = criterion(outputs, targets, cap_list, captions)
    weights = criterion.weight_dict
    loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
    largest = ', '.join(f'{k} {v:.4g}' for v, k in sorted(
        ((loss_dict[k].item() * weights[k], k)
         for k in loss_dict if k in weights), reverse=True)[:4])
    print(f'[check] forward+loss {time.time() - t0:.1f}s: pred_logits '
          f'{tuple(outputs["pred_logits"].shape)}, pred_boxes '
          f'{tuple(outputs["pred_boxes"].shape)}, loss {loss.item():.4f} '
          f'(largest weighted terms: {largest})', flush=True)
    if not torch.isfinite(loss):
        print('[check] FAIL: loss is not finite')
        return 1
    optimizer.zero_grad()
    t0 = time.time()
    loss.backward()
    no_grad = [n for n, q in model.named_parameters()
               if q.requires_grad and n.startswith('backbone.0.')
               and q.grad is None]
    optimizer.step()
    print(f'[check] backward+step {time.time() - t0:.1f}s', flush=True)
    moved = [n for n, q in model.named_parameters()
             if n in frozen and not torch.equal(q, frozen[n])]
    if moved or no_grad:
        print(f'[check] FAIL: frozen backbone tensors moved {moved[:5]}, '
              f'trainable ones without gradient {no_grad[:5]}')
        return 1
    model.eval()
    with torch.no_grad():
        out = model(samples, captions=captions)
    print(f'[check] eval forward: pred_boxes {tuple(out["pred_boxes"].shape)}'
          f'; OK ({len(frozen)} frozen backbone tensors unchanged, '
          f'{len(trainable)} trained)', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
