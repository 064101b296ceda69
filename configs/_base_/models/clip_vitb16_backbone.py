# Shared numbers of the ViT-B/16 CLIP-family backbones: width 768, stride 16,
# and OpenAI CLIP's normalisation (which OpenCLIP LAION models and BiomedCLIP
# also use), in the 0-255 units of mmdet's DetDataPreprocessor.
clip_vitb_width = 768
clip_mean = [122.7709, 116.746, 104.0937]
clip_std = [68.5005, 66.6322, 70.3232]
