"""Build a :class:`RegionScorer` from a model name and a local weight file."""
import os
from typing import Optional, Union

from .prompts import PromptSource
from .region_scorer import RegionScorer


def build_region_scorer(model: str = 'ViT-B-32',
                        weights: Optional[Union[str, os.PathLike]] = None,
                        positive_prompts: PromptSource = 'coco80',
                        negative_prompts: PromptSource = 'background',
                        strategy: str = 'gray',
                        soft_alpha: float = 0.4,
                        batch_size: int = 32,
                        multiplier: Optional[dict] = None,
                        device: str = 'cpu',
                        pretrained_tag: Optional[str] = None) -> RegionScorer:
    """A :class:`RegionScorer` on a model built offline.

    Args:
        model (str): config name (shipped, open_clip built-in, alias) or
            JSON file, e.g. ``'ViT-B-32'``, ``'ViT-Tiny-16-test'``,
            ``'ConceptCLIP'``; built by
            :func:`plugins.models.build_clip_model`, which chooses the
            builder from the config's content (a ``concept_cfg`` section
            builds ConceptCLIP, whose sigmoid head is then used).
        weights (str, optional): ``open_clip_model.safetensors`` (preferred),
            ``open_clip_pytorch_model.bin`` or a folder holding one (for
            ConceptCLIP: its HF folder); read as data, never executed.
            None: random weights (for tests only).
        pretrained_tag (str, optional): open_clip release of the weights
            (for its normalisation statistics), e.g. ``'laion2b_s34b_b79k'``.
        Other args: see :class:`RegionScorer`.
    """
    from plugins.models import build_clip_model
    clip, preprocess, tokenizer = build_clip_model(
        model, weights, device=device, pretrained_tag=pretrained_tag)
    if tokenizer is None:
        raise ValueError(f"model '{model}' has no offline tokenizer; pass "
                         'a model whose vocabulary is available locally')
    return RegionScorer(clip,
                        tokenizer,
                        preprocess,
                        positive_prompts=positive_prompts,
                        negative_prompts=negative_prompts,
                        strategy=strategy,
                        soft_alpha=soft_alpha,
                        batch_size=batch_size,
                        multiplier=multiplier)
