"""Image classification: CIFAR-10 and synthetic images."""
