"""Stand-in for PSALM's llava_arch: binds the builder by name on import."""
from .multimodal_projector.builder import build_vision_projector


class LlavaMetaModel:

    def __init__(self, config):
        super().__init__()
        if hasattr(config, 'mm_vision_tower'):
            self.mm_projector = build_vision_projector(config)


class LlavaMetaForCausalLM:

    def encode_images(self, images):
        image_features = self.get_model().get_vision_tower()(images)
        return self.get_model().mm_projector(image_features)
