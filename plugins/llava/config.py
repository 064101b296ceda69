"""Configuration of the LLaVA-Phi segmentation model (JSON files as data)."""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

from plugins.layers.alignment import (DEFAULT_HIDDEN_DIM, DEFAULT_NUM_HEADS,
                                      DEFAULT_NUM_POINTS)

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'


def load_json_config(name_or_path: Union[str, Path]) -> dict:
    """Read a JSON config by path, or by file name (with or without
    ``.json``) from the shipped ``plugins/llava/configs/``."""
    path = Path(name_or_path)
    if not path.is_file():
        name = path.name if path.suffix == '.json' else f'{path.name}.json'
        path = CONFIG_DIR / name
    if not path.is_file():
        shipped = sorted(p.stem for p in CONFIG_DIR.glob('*.json'))
        raise FileNotFoundError(f'config {name_or_path!r} is neither a file '
                                f'nor a shipped config {shipped}')
    with open(path) as f:
        return json.load(f)


@dataclass
class LlavaSegConfig:
    """Everything needed to build :class:`~plugins.llava.model.LlavaPhiSegModel`.

    The projector keys keep PSALM's names, so the object can be handed to
    ``build_vision_projector`` as PSALM hands it its model config.

    Args:
        llm (dict): ``PhiConfig`` keyword arguments (e.g. ``phi-1_5.json``).
        vision_tower (dict): :class:`SwinVisionTower` arguments.
        image_size (int): Square input resolution.
        swin_type (str): ``'base'`` or ``'large'`` (vision widths for the
            projector).
        mm_projector_type (str): ``deformable`` | ``swin_conv`` | ``linear``
            | ``mlp{N}x_gelu`` | ``identity``.
        mm_hidden_dim (int): Deformable attention width.
        mm_n_heads (int): Deformable attention heads.
        mm_n_points (int): Sampling points per head and level.
        projector_outdim (int, optional): Projector output width; defaults
            to the LLM hidden size (2048 for Phi-1.5).
        mm_num_tokens (int, optional): Image tokens of the deformable
            projector (a square number); the builder's default if None.
        mask_dim (int): Pixel-feature / mask-embedding width.
        image_token_id (int): Id of ``<image>`` (set from the tokenizer).
        seg_token_id (int): Id of ``[SEG]`` (set from the tokenizer).
        freeze_vision_tower (bool): PSALM trains with a frozen tower.
        loss_llm_weight, loss_mask_weight, loss_dice_weight (float): Weights
            of the LM cross-entropy, the mask BCE and the Dice loss.
    """
    llm: dict = field(default_factory=dict)
    vision_tower: dict = field(default_factory=dict)
    image_size: int = 1024
    swin_type: str = 'base'
    mm_projector_type: str = 'deformable'
    mm_hidden_dim: int = DEFAULT_HIDDEN_DIM
    mm_n_heads: int = DEFAULT_NUM_HEADS
    mm_n_points: int = DEFAULT_NUM_POINTS
    projector_outdim: Optional[int] = None
    mm_num_tokens: Optional[int] = None
    mask_dim: int = 256
    image_token_id: int = -1
    seg_token_id: int = -1
    freeze_vision_tower: bool = True
    loss_llm_weight: float = 1.0
    loss_mask_weight: float = 2.0
    loss_dice_weight: float = 1.0

    @classmethod
    def from_file(cls, name_or_path: Union[str, Path],
                  **overrides) -> 'LlavaSegConfig':
        """Load a model config; ``llm``/``vision_tower`` may name other
        shipped JSON files. ``overrides`` (None values skipped) win."""
        data = {k: v for k, v in load_json_config(name_or_path).items()
                if not k.startswith('_')}
        data.update({k: v for k, v in overrides.items() if v is not None})
        for key in ('llm', 'vision_tower'):
            if isinstance(data.get(key), str):
                data[key] = load_json_config(data[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown LlavaSegConfig keys {unknown}; '
                             f'expected a subset of {sorted(known)}')
        config = cls(**data)
        config.llm = {k: v for k, v in config.llm.items()
                      if not k.startswith('_')}
        return config

    @property
    def hidden_size(self) -> int:
        return int(self.llm['hidden_size'])

    def projector_config(self, vision_channels) -> SimpleNamespace:
        """The attribute-access config ``build_vision_projector`` reads,
        with PSALM's names (``mm_input_embeds``, ``mm_hidden_size`` and
        ``hidden_size`` are what its ``swin_conv``/``linear``/``mlp`` types
        read)."""
        cfg = SimpleNamespace(
            mm_projector_type=self.mm_projector_type,
            mm_hidden_dim=self.mm_hidden_dim, mm_n_heads=self.mm_n_heads,
            mm_n_points=self.mm_n_points,
            # None means the LLM width; 0 is passed on (and refused by the
            # builder) rather than silently replaced.
            projector_outdim=(self.hidden_size if self.projector_outdim is None
                              else self.projector_outdim),
            swin_type=self.swin_type,
            mm_input_embeds=vision_channels[-1],
            mm_hidden_size=vision_channels[-1],
            hidden_size=self.hidden_size)
        if self.mm_num_tokens is not None:
            cfg.mm_num_tokens = self.mm_num_tokens
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Union[str, Path]) -> None:
        with open(path, 'w') as f:
            json.dump(self.to_dict(), f, indent=2)
