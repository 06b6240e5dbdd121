"""Generation with the exits of a sorted decoder (full, one exit, early exit, self-speculation)
and the transformers baselines to compare them with; bench.py measures them side by side."""

from .engine import ExitDecoder, Generation, choose_draft, teacher_forced_agreement
from .library import library_assistant_early_exit, library_greedy

__all__ = ["ExitDecoder", "Generation", "choose_draft", "library_assistant_early_exit", "library_greedy",
           "teacher_forced_agreement"]
