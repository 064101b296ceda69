"""Run a PSALM entry point with the deformable projector patched in.

From the PSALM checkout, with this repository on ``PYTHONPATH``::

    # training: PSALM's psalm/train/train.py:train() with PSALM's arguments
    deepspeed third_party/psalm/run_psalm.py train \\
        --deepspeed ./scripts/zero2.json --mm_projector_type deformable ...

    # any other PSALM script (evaluation, demo), run as __main__
    python third_party/psalm/run_psalm.py psalm/eval/referring_segmentation.py ...

``train`` imports ``psalm.train.train`` and calls its ``train()`` after
:func:`psalm_deformable.apply`, so the extended ``ModelArguments`` is the one
parsed. The ``deepspeed`` launcher's ``--local_rank=N`` is passed through.
"""
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psalm_deformable  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    target, rest = sys.argv[1], sys.argv[2:]
    # PSALM scripts import `psalm` from the working directory (its checkout).
    sys.path.insert(0, os.getcwd())
    psalm_deformable.apply()
    if target == 'train':
        import psalm.train.train as psalm_train
        sys.argv = [psalm_train.__file__] + rest
        psalm_train.train()
    else:
        sys.argv = [target] + rest
        runpy.run_path(target, run_name='__main__')


if __name__ == '__main__':
    main()
