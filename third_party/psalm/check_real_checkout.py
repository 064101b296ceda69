"""Apply the deformable-projector drop-in to a real PSALM checkout and run
PSALM's own code paths with it, as ``docs/integrations/psalm.md`` tells a
user to. No hub, no weights files: a tiny random Phi configuration and
PSALM's random Swin-B.

Run from the checkout (``check_real_checkout.sh`` does it)::

    cd /path/to/PSALM
    PYTHONPATH=$PLUGINS:$PLUGINS/third_party/psalm python \\
        $PLUGINS/third_party/psalm/check_real_checkout.py

Steps, each printed:

1. ``psalm_deformable.apply()`` (imports PSALM's model and train modules);
   an ``ImportError`` is printed as the user sees it and the run stops
   (exit 2): that is the answer to "does real PSALM import here".
2. PSALM's ``build_vision_projector`` (the builder module's and the name
   ``llava_phi`` imported) with ``mm_projector_type='deformable'``, on four
   random Swin-B maps.
3. ``PSALM(LlavaConfig(tiny Phi), mask_decoder_cfg=get_mask_config())``,
   then ``initialize_vision_modules`` with PSALM's (extended)
   ``ModelArguments`` and an adapter file saved the way PSALM saves
   ``mm_projector.bin``: the projector's output size must be the LLM's
   ``hidden_size`` (not ``--projector_outdim``), the adapter must load
   strictly, and ``encode_images`` must give what the projector gives on
   the four maps of PSALM's Swin-B.

Exit 1 on a failed check. Not part of ``make test``: it needs the PSALM
checkout (GitHub) and detectron2.

Without CUDA, PSALM's Mask2Former pixel decoder does not import unless the
compiled ``MultiScaleDeformableAttention`` does (``ms_deform_attn_func.py``
raises ``ModuleNotFoundError``), and that op needs CUDA to build; its CPU
forward falls back to ``ms_deform_attn_core_pytorch`` when the op's call
raises. ``--cpu-op-placeholder`` puts a module of that name whose functions
raise on ``sys.path`` when the real one is missing.
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

PLACEHOLDER = '''"""Placeholder for PSALM's compiled op on a machine without CUDA
(written by plugins' check_real_checkout.py): its functions raise, so
PSALM's MSDeformAttn takes its PyTorch fallback."""


def ms_deform_attn_forward(*args, **kwargs):
    raise RuntimeError('MultiScaleDeformableAttention: placeholder, no '
                       'compiled op')


ms_deform_attn_backward = ms_deform_attn_forward
'''

#: A tiny Phi (transformers' PhiConfig fields); PSALM's LLM is Phi-1.5
#: (hidden 2048), the projector's output follows hidden_size.
TINY_PHI = dict(vocab_size=1000, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cpu-op-placeholder', action='store_true')
    p.add_argument('--image-size', type=int, default=384,
                   help="PSALM's input size (Swin-B 384)")
    a = p.parse_args(argv)

    sys.path.insert(0, os.getcwd())  # PSALM's scripts import from the checkout
    tmp = tempfile.mkdtemp(prefix='psalm_check_')
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
    import psalm_deformable
    print('[check] 1. psalm_deformable.apply()', flush=True)
    try:
        report = psalm_deformable.apply()
    except ImportError as err:
        print(f'[check] apply() raised ImportError: {err}', flush=True)
        return 2
    print(f'[check] apply() -> {report}', flush=True)

    from psalm.model.language_model import llava_phi
    from psalm.model.multimodal_projector import builder
    from psalm.train import train as psalm_train
    failures = []

    def check(ok: bool, what: str) -> None:
        print(f'[check] {"ok  " if ok else "FAIL"} {what}', flush=True)
        if not ok:
            failures.append(what)

    print('[check] 2. PSALM build_vision_projector(deformable)', flush=True)
    check(llava_phi.build_vision_projector is builder.build_vision_projector,
          'llava_phi.build_vision_projector is the patched builder')
    cfg = argparse.Namespace(mm_projector_type='deformable', mm_hidden_dim=256,
                             mm_n_heads=8, mm_n_points=4, swin_type='base',
                             projector_outdim=2048)
    projector = builder.build_vision_projector(cfg)
    s = a.image_size
    maps = [torch.randn(1, c, s // r, s // r)
            for c, r in ((128, 4), (256, 8), (512, 16), (1024, 32))]
    with torch.no_grad():
        tokens = projector(maps)
    check(tokens.shape == (1, 256, 2048),
          f'{type(projector).__name__} on Swin-B maps -> '
          f'{tuple(tokens.shape)}')
    swin_conv = builder.build_vision_projector(argparse.Namespace(
        mm_projector_type='swin_conv', projector_outdim=64))
    check(type(swin_conv).__module__ == builder.__name__,
          f'swin_conv stays PSALM\'s ({type(swin_conv).__module__}.'
          f'{type(swin_conv).__name__})')

    print('[check] 3. PSALM model (tiny random Phi) with the deformable '
          'projector', flush=True)
    config = llava_phi.LlavaConfig(**TINY_PHI)
    mask_cfg = psalm_train.get_mask_config()
    torch.manual_seed(0)
    t0 = time.time()
    model = llava_phi.PSALM(config, mask_decoder_cfg=mask_cfg)
    # an adapter saved as PSALM saves mm_projector.bin (keys with the
    # 'model.mm_projector.' prefix), from a projector of the same settings
    want = builder.build_vision_projector(argparse.Namespace(
        mm_projector_type='deformable', mm_hidden_dim=128, mm_n_heads=4,
        mm_n_points=4, swin_type='base', projector_outdim=64))
    adapter = os.path.join(tmp, 'mm_projector.bin')
    torch.save({f'model.mm_projector.{k}': v
                for k, v in want.state_dict().items()}, adapter)
    fields = {f.name for f in dataclasses.fields(psalm_train.ModelArguments)}
    check({'mm_hidden_dim', 'mm_n_heads', 'mm_n_points'} <= fields,
          'ModelArguments has mm_hidden_dim/mm_n_heads/mm_n_points')
    model_args = psalm_train.ModelArguments(
        vision_tower=None, mm_projector_type='deformable', mm_hidden_dim=128,
        mm_n_heads=4, mm_n_points=4, swin_type='base', projector_outdim=2048,
        pretrain_mm_mlp_adapter=adapter)
    print('[check] ---- initialize_vision_modules: what PSALM and the '
          'drop-in print ----', flush=True)
    model.get_model().initialize_vision_modules(model_args)
    print(f'[check] ---- built in {time.time() - t0:.1f}s', flush=True)
    mm = model.get_model().mm_projector
    out_dim = getattr(mm, 'out_dim', None)
    check(out_dim == config.hidden_size,
          f'projector output {out_dim} == hidden_size {config.hidden_size} '
          f'(--projector_outdim {model_args.projector_outdim} ignored)')
    check(all(torch.equal(v, want.state_dict()[k])
              for k, v in mm.state_dict().items()),
          'adapter loaded into mm_projector (every tensor equal)')
    check(model.config.mm_hidden_dim == 128 and model.config.mm_n_heads == 4,
          'mm_hidden_dim/mm_n_heads copied onto model.config')
    model.eval()
    images = torch.randn(1, 3, s, s)
    with torch.no_grad():
        t0 = time.time()
        feats = model.get_model().get_vision_tower()(images)
        direct = mm(list(feats))
        enc = model.encode_images(images)
    check(enc.shape == (1, 256, config.hidden_size)
          and torch.equal(enc, direct),
          f'encode_images -> {tuple(enc.shape)} == projector(all 4 Swin maps '
          f'{[tuple(f.shape[1:]) for f in feats]}) ({time.time() - t0:.1f}s)')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
