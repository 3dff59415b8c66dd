"""What the readers produce: paragraphs that remember their document, section and pages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Paragraph:
    """Clean text of one paragraph, with the section it sits in and the pages it spans (1-based).

    ``page_breaks`` holds ``(char_offset, page)`` for each place inside ``text`` where a new page
    starts, so a sentence's pages can be recovered after segmentation.
    """

    text: str
    section: str | None = None
    page_start: int | None = None
    page_end: int | None = None
    page_breaks: list[tuple[int, int]] = field(default_factory=list)
    ocr: bool = False
    table: bool = False  # a table cell: never merged with the prose around it

    def page_at(self, offset: int) -> int | None:
        page = self.page_start
        for start, number in self.page_breaks:
            if offset >= start:
                page = number
            else:
                break
        return page


@dataclass
class ReadDocument:
    """A reader's output for one file."""

    title: str
    paragraphs: list[Paragraph]
    pages: int | None = None  # None for Markdown
    ocr_pages: list[int] = field(default_factory=list)
    blank_pages: list[int] = field(default_factory=list)  # nothing drawn: no text, image or drawing
    ocr_skipped_pages: list[int] = field(default_factory=list)  # needed OCR past ingest.max_ocr_pages
    encoding: str | None = None  # Markdown: the text encoding the file was decoded from
    warnings: list[str] = field(default_factory=list)
