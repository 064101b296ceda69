"""A compact LLaVA-Phi segmentation model (PSALM's path, end to end).

Swin vision tower (4 NCHW maps) -> ``mm_projector`` (built by
``build_vision_projector``, e.g. the deformable projector on all 4 maps) ->
image tokens spliced into Phi's input embeddings at ``<image>`` ->
``PhiForCausalLM`` -> the last hidden state of each ``[SEG]`` token,
projected, dotted with per-pixel features of the image -> mask logits.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from transformers import PhiConfig, PhiForCausalLM

from .config import LlavaSegConfig
from .losses import mask_bce_loss, mask_dice_loss
from .mask_head import PixelDecoder, SegTokenMaskHead
from .splice import IGNORE_INDEX, splice_image_tokens
from .vision_tower import build_vision_tower

#: Projector types that take all four Swin maps; PSALM's own types take the
#: last map only (its ``encode_images`` passes ``image_features[-1]``).
MULTI_SCALE_PROJECTORS = ('deformable',)
#: PSALM types that act on tokens ``(B, N, C)`` rather than an NCHW map.
TOKEN_PROJECTORS = ('linear', 'identity')


def projector_inputs(projector_type: str, maps: List[torch.Tensor]):
    """What the projector of ``projector_type`` is called with.

    ``deformable``: the list of all maps. ``swin_conv``: the last NCHW map
    (PSALM). ``linear``/``mlp{N}x_gelu``/``identity``: the last map
    flattened to tokens ``(B, H*W, C)``.
    """
    if projector_type in MULTI_SCALE_PROJECTORS:
        return list(maps)
    last = maps[-1]
    if projector_type in TOKEN_PROJECTORS or projector_type.startswith('mlp'):
        return last.flatten(2).transpose(1, 2)
    return last


def _rebuild_rotary_embeddings(llm: nn.Module, config) -> int:
    """Re-create the rotary embeddings (their buffers are not in the file
    and stay on the meta device): one per model in transformers 4.57 (built
    from the config), one per attention layer in 4.36, PSALM's pin (built
    from ``dim``/``max_position_embeddings``/``base``). Returns how many
    were rebuilt."""
    names = [n for n, _ in llm.named_modules() if n.endswith('rotary_emb')]
    for name in names:
        old = llm.get_submodule(name)
        if hasattr(old, 'dim') and hasattr(old, 'base'):
            kwargs = dict(max_position_embeddings=old.max_position_embeddings,
                          base=old.base)
            if hasattr(old, 'scaling_factor'):
                kwargs['scaling_factor'] = old.scaling_factor
            fresh = type(old)(old.dim, **kwargs)
        else:
            fresh = type(old)(config=config)
        llm.set_submodule(name, fresh)
    return len(names)


def read_phi_config(folder: str) -> PhiConfig:
    """The ``PhiConfig`` of a local Hugging Face folder, from its
    ``config.json``.

    Without ``config.json`` transformers does not fail: it builds Phi's
    default configuration (1.4B parameters), and the weights then fail to
    load with a size mismatch of ``embed_tokens``.  Here the missing file
    is named instead.

    Raises:
        FileNotFoundError: ``folder`` is not a folder, or has no
            ``config.json``.
    """
    from pathlib import Path
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'Phi model folder not found: {folder} (a '
                                'local Hugging Face folder with config.json '
                                'and the weights)')
    config_file = folder / 'config.json'
    if not config_file.is_file():
        raise FileNotFoundError(
            f'{config_file} not found: a Phi folder needs its config.json '
            f'(the architecture) next to the weights; found '
            f'{sorted(p.name for p in folder.iterdir())}')
    return PhiConfig.from_pretrained(str(folder), local_files_only=True)


def load_pretrained_phi(folder: str, vocab_size: int) -> PhiForCausalLM:
    """Phi from a local Hugging Face folder (``config.json`` +
    ``model.safetensors`` or a sharded index), resized to ``vocab_size``.

    Weights are read with :func:`plugins.utils.safe_load` (no pickle, no
    remote code) into a model built on the meta device, so the random
    initialisation of 1.4B parameters is skipped.

    Raises:
        FileNotFoundError: no ``config.json`` (see :func:`read_phi_config`)
            or no weights file.
        CheckpointError: a malformed ``model.safetensors.index.json``
            (naming it) or an unreadable weights file.
    """
    from pathlib import Path

    from plugins.utils import safe_load, safe_load_sharded

    config = read_phi_config(folder)
    folder = Path(folder)
    index = folder / 'model.safetensors.index.json'
    if index.exists():
        state = safe_load_sharded(index)
    else:
        state = safe_load(folder / 'model.safetensors')
    with torch.device('meta'):
        llm = PhiForCausalLM(config)
    missing, unexpected = llm.load_state_dict(state, strict=False, assign=True)
    # Non-persistent buffers (rotary inv_freq) are not in the file.
    missing = [k for k in missing if 'rotary_emb' not in k]
    if missing or unexpected:
        raise ValueError(f'{folder}: missing keys {missing[:5]}..., '
                         f'unexpected keys {unexpected[:5]}...')
    _rebuild_rotary_embeddings(llm, config)
    if vocab_size != config.vocab_size:
        llm.resize_token_embeddings(vocab_size)
    return llm


@dataclass
class LlavaSegOutput:
    """Output of :meth:`LlavaPhiSegModel.forward`.

    Attributes:
        loss (Tensor | None): Weighted sum of the losses.
        losses (dict): ``loss_llm``, ``loss_mask`` (BCE), ``loss_dice``
            (unweighted, detached) for logging.
        logits (Tensor): ``(B, L', vocab)`` LM logits.
        mask_logits (Tensor): ``(S, H, W)``, one mask per ``[SEG]`` token.
        seg_batch_index (Tensor): ``(S,)`` sample of each ``[SEG]`` token.
    """
    loss: Optional[torch.Tensor]
    losses: Dict[str, torch.Tensor] = field(default_factory=dict)
    logits: Optional[torch.Tensor] = None
    mask_logits: Optional[torch.Tensor] = None
    seg_batch_index: Optional[torch.Tensor] = None


class LlavaPhiSegModel(nn.Module):
    """LLaVA-Phi with a ``[SEG]``-token mask head.

    Args:
        config (LlavaSegConfig): Model configuration (token ids included).
        vision_dtype (torch.dtype, optional): Dtype of the frozen vision
            tower (PSALM casts it to the compute dtype, fp16/bf16). Default:
            float32.
        llm (PhiForCausalLM, optional): A pretrained LLM (see
            :func:`load_pretrained_phi`); a randomly initialised one is
            built from ``config.llm`` if None.

    Shapes (forward):
        - images: ``(B, 3, S, S)``
        - input_ids, attention_mask, labels: ``(B, L)``, one ``<image>`` per
          image
        - masks: ``(S_seg, S, S)`` targets, one per ``[SEG]`` in order

    Example:
        >>> cfg = LlavaSegConfig.from_file('llava-phi-seg_tiny',
        ...                                image_token_id=62, seg_token_id=63)
        >>> model = LlavaPhiSegModel(cfg)
    """

    def __init__(self, config: LlavaSegConfig,
                 vision_dtype: torch.dtype = torch.float32,
                 llm: Optional[PhiForCausalLM] = None):
        super().__init__()
        from .projector_builder import build_vision_projector

        if config.image_token_id < 0 or config.seg_token_id < 0:
            raise ValueError(
                f'image_token_id ({config.image_token_id}) and seg_token_id '
                f'({config.seg_token_id}) must be set (from the tokenizer, '
                'see plugins.llava.tokenizer.add_llava_tokens)')
        self.config = config
        self.vision_tower = build_vision_tower(
            config.vision_tower, img_size=config.image_size,
            frozen=config.freeze_vision_tower).to(vision_dtype)
        channels = self.vision_tower.channels
        self.mm_projector = build_vision_projector(
            config.projector_config(channels))
        self.llm = llm if llm is not None else PhiForCausalLM(
            PhiConfig(**config.llm))
        self.pixel_decoder = PixelDecoder(channels, config.mask_dim)
        self.mask_head = SegTokenMaskHead(config.hidden_size, config.mask_dim)

    # -- building blocks ---------------------------------------------------
    def encode_images(self, images: torch.Tensor):
        """Vision maps and projected image tokens.

        Returns:
            tuple: ``(maps, tokens)``: the 4 NCHW maps and ``(B, N, hidden)``.
        """
        maps = self.vision_tower(images)
        tokens = self.mm_projector(
            projector_inputs(self.config.mm_projector_type, maps))
        return maps, tokens

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the LLM's activations in backward (non-reentrant, so
        the frozen tower needs no ``requires_grad`` inputs)."""
        self.llm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=dict(use_reentrant=False))

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # -- forward -------------------------------------------------------------
    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None,
                masks: Optional[torch.Tensor] = None) -> LlavaSegOutput:
        cfg = self.config
        maps, image_tokens = self.encode_images(images)
        embed = self.llm.get_input_embeddings()
        # Placeholder ids may lie outside a resized vocabulary's trained
        # rows; they are replaced anyway, so embed a valid id instead.
        safe_ids = input_ids.masked_fill(input_ids == cfg.image_token_id, 0)
        spliced = splice_image_tokens(
            input_ids, embed(safe_ids), image_tokens, cfg.image_token_id,
            attention_mask=attention_mask, labels=labels)
        out = self.llm(inputs_embeds=spliced.inputs_embeds,
                       attention_mask=spliced.attention_mask,
                       output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]  # (B, L', hidden)

        seg_rows, seg_cols = torch.nonzero(input_ids == cfg.seg_token_id,
                                           as_tuple=True)
        seg_positions = spliced.token_positions[seg_rows, seg_cols]
        pixel_features = self.pixel_decoder(maps)
        mask_logits = self.mask_head(hidden[seg_rows, seg_positions],
                                     pixel_features, seg_rows,
                                     images.shape[-2:])

        losses: Dict[str, torch.Tensor] = {}
        total = None
        if labels is not None:
            losses['loss_llm'] = self._lm_loss(out.logits, spliced.labels)
        if masks is not None:
            if masks.shape[0] != mask_logits.shape[0]:
                raise ValueError(f'{masks.shape[0]} target masks for '
                                 f'{mask_logits.shape[0]} [SEG] tokens')
            losses['loss_mask'] = mask_bce_loss(mask_logits, masks)
            losses['loss_dice'] = mask_dice_loss(mask_logits, masks)
        if losses:
            weights = dict(loss_llm=cfg.loss_llm_weight,
                           loss_mask=cfg.loss_mask_weight,
                           loss_dice=cfg.loss_dice_weight)
            total = sum(weights[k] * v for k, v in losses.items())
        return LlavaSegOutput(
            loss=total, losses={k: v.detach() for k, v in losses.items()},
            logits=out.logits, mask_logits=mask_logits,
            seg_batch_index=seg_rows)

    @staticmethod
    def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy in float32 over non-ignored labels."""
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        return nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1), ignore_index=IGNORE_INDEX)
