"""Tokenizer, model and adapter set-up of the LLaVA-Phi trainer, from the
parsed ``tools/train_llava.py`` arguments (PSALM's names)."""
import logging
from typing import Tuple

import torch

from .config import LlavaSegConfig
from .model import LlavaPhiSegModel, load_pretrained_phi, read_phi_config
from .tokenizer import add_llava_tokens, build_toy_tokenizer

logger = logging.getLogger('plugins.llava.train')


def compute_dtype(args) -> torch.dtype:
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return torch.float32


def build_tokenizer(args):
    """The toy word-level tokenizer, or a local tokenizer (e.g. Phi-1.5's)
    from ``--model_name_or_path`` with ``<image>``/``[SEG]`` added."""
    if not args.model_name_or_path:
        return build_toy_tokenizer()
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(
        args.model_name_or_path, local_files_only=True)
    add_llava_tokens(tokenizer)
    return tokenizer


def build_model(args, tokenizer) -> Tuple[LlavaPhiSegModel, LlavaSegConfig]:
    """Build the model from ``--model_config`` plus the projector arguments;
    with ``--model_name_or_path``, the LLM's config and weights come from
    that local folder."""
    overrides = dict(
        mm_projector_type=args.mm_projector_type,
        mm_hidden_dim=args.mm_hidden_dim, mm_n_heads=args.mm_n_heads,
        mm_n_points=args.mm_n_points, projector_outdim=args.projector_outdim,
        swin_type=args.swin_type, image_size=args.image_size,
        mm_num_tokens=args.mm_num_tokens)
    config = LlavaSegConfig.from_file(args.model_config, **overrides)
    config.image_token_id = tokenizer.convert_tokens_to_ids('<image>')
    config.seg_token_id = tokenizer.convert_tokens_to_ids('[SEG]')
    if args.model_name_or_path:
        config.llm = read_phi_config(args.model_name_or_path).to_dict()
    config.llm['vocab_size'] = max(int(config.llm['vocab_size']),
                                   len(tokenizer))
    config.llm['use_cache'] = False
    llm = None
    if args.model_name_or_path:
        llm = load_pretrained_phi(args.model_name_or_path,
                                  config.llm['vocab_size'])
    model = LlavaPhiSegModel(config, vision_dtype=compute_dtype(args), llm=llm)
    return model, config


def load_adapter(model: LlavaPhiSegModel, path: str):
    """``--pretrain_mm_mlp_adapter``: load with every key checked (PSALM's
    ``strict=False`` silently loads nothing on a name mismatch); return the
    loader's ``LoadResult``."""
    from .projector_weights import load_projector_weights
    result = load_projector_weights(model.mm_projector, path, strict=True)
    logger.info('pretrain_mm_mlp_adapter %s: loaded %d of %d mm_projector '
                'keys (missing %d, unexpected %d)', path, len(result.loaded),
                len(model.mm_projector.state_dict()), len(result.missing),
                len(result.unexpected))
    return result


def match_batchnorm_buffers(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast BatchNorm running statistics to the compute dtype.

    DeepSpeed 0.19 casts parameters, not buffers, to bf16/fp16 (so that
    buffers such as rotary ``inv_freq`` keep fp32). A BatchNorm (PSALM's
    ``swin_conv`` projector has three) then gets bf16 weights with fp32
    running statistics and fails (``expected scalar type BFloat16 but found
    Float``). Casting the statistics restores what ``module.bfloat16()`` did
    in the DeepSpeed versions PSALM was written for. Returns the number of
    BatchNorm layers changed.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) \
                and module.running_mean is not None:
            module.running_mean = module.running_mean.to(dtype)
            module.running_var = module.running_var.to(dtype)
            count += 1
    return count
