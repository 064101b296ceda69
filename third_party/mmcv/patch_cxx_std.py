"""Rewrite every ``-std=c++14`` / ``-std=c++17`` in mmcv's setup.py to C++20.

torch 2.14's headers use C++20 features; mmcv 2.1.0 hard-codes older
standards for both the host compiler and nvcc (``-std=c++14``, and
``/std:c++14`` / ``-std=c++17`` for some platforms).  The patch is a plain text
substitution and fails loudly if nothing matched, so a changed sdist is noticed.
"""
import re
import sys
from pathlib import Path

OLD_STD = re.compile(r"(-std=|/std:)c\+\+1[47]")


def patch(path: Path) -> int:
    text = path.read_text()
    new_text, count = OLD_STD.subn(lambda m: m.group(1) + 'c++20', text)
    if count == 0:
        raise SystemExit(f'{path}: no -std=c++14/17 flag found; '
                         'the mmcv sdist changed, review the recipe')
    path.write_text(new_text)
    return count


if __name__ == '__main__':
    n = patch(Path(sys.argv[1]))
    print(f'[mmcv] replaced {n} C++ standard flag(s) with c++20')
