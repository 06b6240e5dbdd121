"""sortednet-cli: train one network whose shared weights hold many sub-models (SortedNet)."""

__version__ = "0.1.0"
