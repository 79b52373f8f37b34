"""Helpers shared by the golden-file scripts that build PyTorch reference models (not imported by the tests)."""
import torch


def param_count(model: torch.nn.Module) -> int:
    """Number of distinct trainable scalars."""
    return sum(p.numel() for p in model.parameters())


def perturb_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Add N(0, 0.1^2 * mean(p^2) + 0.02^2) noise to every tensor, so zero biases and unit norm scales move too."""
    with torch.no_grad():
        for p in model.parameters():
            std = (0.1 * p.pow(2).mean().sqrt() + 0.02).item()
            p.add_(std * torch.randn(p.shape, generator=generator))
