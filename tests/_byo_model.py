"""A plain ``nn.Module`` (no timm, no Hugging Face) that tests load by import string.

``concept-probe run --model _byo_model:TinyNet --model-kwargs width=8`` imports it from the
current directory, as a user's own model file would be.
"""

from torch import nn


class TinyNet(nn.Module):
    """Two convolutions and a linear classifier; ``width`` channels, ``num_classes`` logits."""

    def __init__(self, width: int = 8, num_classes: int = 3, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.conv1(x).relu()))
        return self.fc(self.pool(x).flatten(1))


def tiny_net(width: int = 8, num_classes: int = 3) -> nn.Module:
    """A factory function returning :class:`TinyNet`."""
    return TinyNet(width, num_classes)


NOT_A_MODEL = 3
