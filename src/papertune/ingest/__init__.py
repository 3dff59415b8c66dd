"""Stage 1, ingest: PDFs (with OCR where needed) and Markdown -> clean, traceable text chunks."""

from papertune.ingest.stage import CHUNKS_FILE, REPORT_FILE, failed_documents, load_chunks, run

__all__ = ["CHUNKS_FILE", "REPORT_FILE", "failed_documents", "load_chunks", "run"]
