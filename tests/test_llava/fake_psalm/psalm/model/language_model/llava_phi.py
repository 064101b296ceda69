"""Stand-in for PSALM's llava_phi: the call sites the drop-in patches."""
import torch
import torch.nn as nn

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from ..multimodal_projector.builder import build_vision_projector


class FakeSwinB(nn.Module):
    """Four NCHW maps with Swin-B widths at strides 4..32 (random)."""
    channels = (128, 256, 512, 1024)

    def forward(self, images):
        b, _, h, w = images.shape
        g = torch.Generator().manual_seed(0)
        return tuple(torch.randn(b, c, h // s, w // s, generator=g).to(
            images.dtype) for c, s in zip(self.channels, (4, 8, 16, 32)))


class PSALMModel(LlavaMetaModel, nn.Module):

    def __init__(self, config):
        super().__init__(config)
        self.config = config
        self.projector_outdim = config.hidden_size

    def get_vision_tower(self):
        return self.vision_tower

    def initialize_vision_modules(self, model_args, fsdp=None):
        # PSALM reads these two without a default (ModelArguments has them).
        with_norm = model_args.with_norm
        with_layernorm = model_args.with_layernorm
        self.vision_tower = FakeSwinB()
        self.config.swin_type = getattr(model_args, 'swin_type', 'base')
        if self.config.swin_type != 'base':
            self.config.mm_input_embeds = 1536
        self.config.mm_projector_type = getattr(model_args,
                                                'mm_projector_type', 'conv')
        self.config.mm_hidden_size = 256
        self.config.with_norm = with_norm
        self.config.with_layernorm = with_layernorm
        self.config.projector_outdim = self.projector_outdim
        if not hasattr(self, 'mm_projector'):
            self.mm_projector = build_vision_projector(self.config)
        adapter = model_args.pretrain_mm_mlp_adapter
        if adapter is not None:
            weights = torch.load(adapter, map_location='cpu', weights_only=True)
            # PSALM's behaviour: prefix stripped, strict=False.
            self.mm_projector.load_state_dict(
                {k.split('mm_projector.')[1]: v for k, v in weights.items()
                 if 'mm_projector' in k}, strict=False)


class PSALM(LlavaMetaForCausalLM, nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = PSALMModel(config)

    def get_model(self):
        return self.model

    def encode_images(self, images):
        image_features = self.get_model().get_vision_tower()(images)
        image_features = self.get_model().mm_projector(image_features[-1])
        return image_features
