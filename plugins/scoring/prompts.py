"""Prompt sets: shipped lists (data files) and user lists or files."""
import os
from pathlib import Path
from typing import List, Sequence, Union

PROMPT_DIR = Path(__file__).resolve().parent / 'prompts'
#: Short names of the shipped prompt files.
SHIPPED_PROMPTS = {
    'coco80': PROMPT_DIR / 'coco80_positive.txt',
    'background': PROMPT_DIR / 'background_negative.txt',
}

PromptSource = Union[str, os.PathLike, Sequence[str]]


def read_prompt_file(path: Union[str, os.PathLike]) -> List[str]:
    """One prompt per line; blank lines and ``#`` comments are skipped."""
    lines = Path(path).read_text(encoding='utf-8').splitlines()
    prompts = [ln.strip() for ln in lines]
    return [p for p in prompts if p and not p.startswith('#')]


def load_prompts(source: PromptSource) -> List[str]:
    """A prompt list from a shipped name, a file, or a list.

    Args:
        source: ``'coco80'`` / ``'background'`` (shipped), a path to a text
            file (one prompt per line), a comma-separated string
            (``'a cat,a dog'``), or a sequence of strings.

    Raises:
        ValueError: the result is empty.
    """
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text in SHIPPED_PROMPTS:
            prompts = read_prompt_file(SHIPPED_PROMPTS[text])
        elif Path(text).is_file():
            prompts = read_prompt_file(text)
        else:
            prompts = [p.strip() for p in text.split(',') if p.strip()]
    else:
        prompts = [str(p).strip() for p in source if str(p).strip()]
    if not prompts:
        raise ValueError(f'no prompts in {source!r} (shipped names: '
                         f'{sorted(SHIPPED_PROMPTS)})')
    return prompts
