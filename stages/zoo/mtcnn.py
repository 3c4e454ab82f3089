"""MTCNN's three stage nets (facenet-pytorch's P-, R- and O-Net, with their state_dict keys), each
with ONE output so every format and the runtime treat it like any other model:

    P-Net: [N, 6, h, w]  box regression (4), p(not face), p(face) per 12x12 window (stride 2)
    R-Net: [N, 6]        box regression (4), p(not face), p(face)
    O-Net: [N, 16]       box regression (4), landmarks (10: x1..x5, y1..y5), p(not face), p(face)

The cascade that strings them together runs on the board: runtime/tasks/face_detection.py.
"""
from __future__ import annotations

import torch
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet


class PNetOne(PNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reg, prob = super().forward(x)
        return torch.cat([reg, prob], 1)


class RNetOne(RNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reg, prob = super().forward(x)
        return torch.cat([reg, prob], 1)


class ONetOne(ONet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reg, landmarks, prob = super().forward(x)
        return torch.cat([reg, landmarks, prob], 1)


def pnet() -> PNetOne:
    return PNetOne(pretrained=False)  # weights: model.weights (the package's data/pnet.pt, sha256-checked)


def rnet() -> RNetOne:
    return RNetOne(pretrained=False)


def onet() -> ONetOne:
    return ONetOne(pretrained=False)
