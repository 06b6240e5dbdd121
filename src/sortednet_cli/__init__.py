"""sortednet-cli: train one network whose shared weights hold many sub-models (SortedNet)."""

__version__ = "0.1.0"


def load_exported(path):
    """An exported sub-model (from `sortednet export`) as a plain torch.nn.Module in eval mode."""
    from .engine.export import load_exported as load

    return load(path)
