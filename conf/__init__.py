"""The Hydra config tree, shipped inside the package as sortednet_cli.conf."""
