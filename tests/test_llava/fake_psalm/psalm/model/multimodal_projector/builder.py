"""Stand-in for PSALM's projector builder: the same switch, PSALM's
``swin_conv`` layout and forward (written from notes, see README.md)."""
import re

import torch.nn as nn

SWIN_CONV_WIDTH = 2048  # fixed in PSALM


class _Block(nn.Module):
    """Stride-2 BasicBlock with PSALM's names; conv2 runs twice, as PSALM's."""

    def __init__(self, cin, width):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, 2, bias=False),
                                        nn.BatchNorm2d(width))
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(self.conv2(y)))
        return self.relu(y + self.downsample(x))


class ResNetSwinStandIn(nn.Module):
    def __init__(self, input_dim=1024, out_dim=4096):
        super().__init__()
        self.layer1 = nn.Sequential(_Block(input_dim, SWIN_CONV_WIDTH))
        self.fc = nn.Linear(SWIN_CONV_WIDTH, out_dim)

    def forward(self, x):
        y = self.layer1(x)
        return self.fc(y.reshape(y.shape[0], y.shape[1], -1).permute(0, 2, 1))


def build_vision_projector(config, delay_load=False, **kwargs):
    projector_type = getattr(config, 'mm_projector_type', 'linear')
    if projector_type == 'linear':
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    if projector_type == 'swin_conv':
        return ResNetSwinStandIn(getattr(config, 'mm_input_embeds', 1024),
                                 getattr(config, 'projector_outdim', 4096))
    match = re.match(r'^mlp(\d+)x_gelu$', projector_type)
    if match:
        layers = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(config.hidden_size,
                                            config.hidden_size)]
        return nn.Sequential(*layers)
    raise ValueError(f'Unknown projector type: {projector_type}')
