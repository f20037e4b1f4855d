"""tta-serve training: the fastbook chapter-7 recipe in plain PyTorch + torchvision."""
