"""Compile the op's kernels ahead of time into the cache.

``python -m plugins.ops.build`` (run by ``tools/setup_env.sh``) compiles the
CPU kernel and, when :func:`build_config.want_cuda` says so, the CUDA kernel
for ``TORCH_CUDA_ARCH_LIST`` (default ``8.0;9.0``), into
``$PLUGINS_CACHE_DIR/ops/<key>/``.  A key that is already built is skipped
at once, so a second set-up (even from a fresh clone) costs nothing.
"""
import argparse
import os
import sys
import time

from .ms_deform_attn import build_config, loader


def build(kinds, verbose: bool = False) -> int:
    """Build ``kinds``; return the number of failures."""
    failures = 0
    for kind in kinds:
        key = loader.cache_key(kind)
        target = loader.cached_library(kind)
        what = kind if kind == 'cpu' else f'{kind} (archs {build_config.cuda_arch_list()})'
        if os.path.isfile(target):
            print(f'[plugins.ops.build] {what}: cached ({key})')
            continue
        print(f'[plugins.ops.build] {what}: compiling into '
              f'{os.path.dirname(target)} ...', flush=True)
        t0 = time.time()
        try:
            loader.compile_library(kind, verbose=verbose)
        except Exception as e:  # report and go on with the other kind
            failures += 1
            print(f'[plugins.ops.build] {what}: FAILED after '
                  f'{time.time() - t0:.0f}s: {e}', file=sys.stderr)
            continue
        print(f'[plugins.ops.build] {what}: done in {time.time() - t0:.0f}s')
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m plugins.ops.build', description=__doc__.split('\n')[0])
    parser.add_argument('--cpu-only', action='store_true',
                        help='skip the CUDA kernel even if nvcc is present')
    parser.add_argument('--verbose', action='store_true',
                        help='show the compiler command lines')
    args = parser.parse_args(argv)
    kinds = ['cpu']
    if (not args.cpu_only and build_config.want_cuda()
            and build_config.cuda_sources()):
        kinds.append('cuda')
    elif not args.cpu_only:
        print('[plugins.ops.build] cuda: skipped (torch is not a CUDA build, '
              'nvcc is missing, or PLUGINS_BUILD_CUDA=0)')
    print(f'[plugins.ops.build] cache: {loader.cache_root()}')
    return 1 if build(kinds, args.verbose) else 0


if __name__ == '__main__':
    sys.exit(main())
