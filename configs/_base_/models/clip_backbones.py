# The CLIP-family image encoders of this project's detector configs, and the
# input normalisation they expect.  A config takes one with
#   model = dict(backbone=dict(_base_.openclip_vitb16, _delete_=True), ...)
# and its data preprocessor's mean/std with
#   data_preprocessor=dict(mean=_base_.clip_mean, std=_base_.clip_std)
# Weights are always a local file at `pretrained` (None: random init, for
# tests); docs/model_zoo.md says which file each backbone expects.

# OpenAI CLIP's normalisation (OpenCLIP LAION models and BiomedCLIP use it
# too), in the 0-255 units of mmdet's DetDataPreprocessor: open_clip's
# OPENAI_DATASET_MEAN / _STD x 255.
clip_mean = [122.7709, 116.746, 104.0937]
clip_std = [68.5005, 66.6322, 70.3232]
clip_vitb_width = 768  # channels of the ViT-B map (B/16 and B/32)
# ConceptCLIP (SigLIP) normalises with mean = std = 0.5; its patch is 14.
conceptclip_data_preprocessor = dict(
    mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5],
    pad_size_divisor=14)

# ViT-B image encoders, frozen by default; unfreeze with frozen=False and,
# for the last blocks only, train_last_n_blocks=4.
surgeryclip_vitb16 = dict(
    type='SurgeryCLIPBackbone',
    # OpenAI's `ViT-B-16.pt` (CLIP Surgery's checkpoint), trained with
    # QuickGELU: the activation is part of the architecture, as in open_clip
    # (an OpenAI file loaded into a GELU model is refused, naming this key).
    # For open_clip's GELU ViT-B-16 releases (LAION) say 'ViT-B-16'.  The
    # position embedding is resampled bilinearly as CLIP Surgery does
    # (pos_embed_interp default).
    model_name='ViT-B-16-quickgelu',
    surgery_depth=6,  # the last 6 of 12 blocks get the v-v attention path
    pretrained=None,
    frozen=True)
openclip_vitb16 = dict(
    type='OpenCLIPBackbone',
    # open_clip `open_clip_model.safetensors` / `open_clip_pytorch_model.bin`
    # (e.g. laion2b_s34b_b88k, GELU); for OpenAI's `ViT-B-16.pt` (trained
    # with QuickGELU) set model_name='ViT-B-16-quickgelu'.
    model_name='ViT-B-16',
    pretrained=None,
    frozen=True)
# stride 32; OpenAI's `ViT-B-32.pt`: model_name='ViT-B-32-quickgelu'
openclip_vitb32 = dict(openclip_vitb16, model_name='ViT-B-32')
biomedclip_vitb16 = dict(
    type='BiomedCLIPBackbone',
    # `open_clip_pytorch_model.bin` of the
    # BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 folder.
    pretrained=None,
    frozen=True)
# ConceptCLIP's image tower: timm's SigLIP so400m/14 (width 1152, patch 14,
# 27 blocks; 27 x 27 tokens at 384 px) and its `image_proj`.  The
# downloaded ConceptCLIP folder (`model.safetensors` or a sharded
# `model.safetensors.index.json`, `config.json` checked; no remote code).
conceptclip_so400m14 = dict(
    type='ConceptCLIPBackbone',
    model_name='ConceptCLIP-SO400M-14-384',
    pretrained=None,
    frozen=True)

# The demos' test-size encoders (random weights, trained with the detector):
# `ViT-Tiny-16-test` is width 64, 4 blocks, patch 16.
clip_tiny_width = 64
surgeryclip_tiny = dict(
    type='SurgeryCLIPBackbone',
    model_name='ViT-Tiny-16-test',
    surgery_depth=2,  # the last 2 of 4 blocks get the v-v path
    frozen=False)
openclip_tiny = dict(
    type='OpenCLIPBackbone', model_name='ViT-Tiny-16-test', frozen=False)
biomedclip_tiny = dict(  # BiomedCLIP's timm trunk at test size
    type='BiomedCLIPBackbone', model_name='BiomedCLIP-Tiny-test',
    frozen=False)
