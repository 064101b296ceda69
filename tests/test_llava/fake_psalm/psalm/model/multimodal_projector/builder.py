"""Stand-in for PSALM's projector builder (same switch, tiny modules)."""
import torch.nn as nn


class SwinConvStandIn(nn.Module):
    """Like PSALM's ``swin_conv``: last Swin map -> stride-2 conv -> Linear."""

    def __init__(self, input_dim, out_dim):
        super().__init__()
        self.conv = nn.Conv2d(input_dim, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, out_dim)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(2).transpose(1, 2))


def build_vision_projector(config, delay_load=False, **kwargs):
    projector_type = getattr(config, 'mm_projector_type', 'linear')
    if projector_type == 'linear':
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    if projector_type == 'swin_conv':
        return SwinConvStandIn(getattr(config, 'mm_input_embeds', 1024),
                               getattr(config, 'projector_outdim', 4096))
    raise ValueError(f'Unknown projector type: {projector_type}')
