"""papertune: from a folder of AI-research documents to a fine-tuned question-answering model."""

from __future__ import annotations

__version__ = "0.1.0"
