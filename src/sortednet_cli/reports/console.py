"""The console every command prints to."""

from rich.console import Console


def make_console() -> Console:
    """A terminal gets rich's own width; logs and pipes get room for the 160-cell grid table."""
    console = Console()
    return console if console.is_terminal else Console(width=160)
