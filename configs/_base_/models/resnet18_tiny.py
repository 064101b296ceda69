# A small random-init ResNet-18 (C3-C5) and a 1x1 ChannelMapper to four
# levels (C5 + one strided extra): the plain-mmdet reference backbone of the
# tiny demos.
resnet18_tiny = dict(
    type='ResNet',
    depth=18,
    num_stages=4,
    out_indices=(1, 2, 3),
    frozen_stages=-1,
    norm_cfg=dict(type='BN', requires_grad=True),
    norm_eval=False,
    style='pytorch',
    init_cfg=None)
resnet18_channel_mapper = dict(
    type='ChannelMapper',
    in_channels=[128, 256, 512],
    kernel_size=1,
    out_channels=256,
    act_cfg=None,
    norm_cfg=dict(type='GN', num_groups=32),
    num_outs=4)
