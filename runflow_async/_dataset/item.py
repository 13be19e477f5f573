"""One item of a dataset: a valid input line, kept in little memory for the whole run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runflow_async._core.requests import EditRequest, GenerateRequest

__all__ = ["DatasetItem"]


@dataclass(frozen=True, slots=True)
class DatasetItem:
    """One valid line of an input file, kept lean: its validated fields, not a model.

    A 100,000-line file is held for the whole run, so an item keeps only the
    values its line set (validated when the file was read: bad input is
    refused before anything is sent), with the field names shared by every
    line that sets the same ones; :attr:`request` rebuilds the request from
    them without validating again.

    Attributes:
        ordinal: 0-based position among the items of the file.
        line: 1-based line number in the file (a CSV row's last line).
        key: Stable id of the item (see the module docstring).
        edit: Whether it is an edit job (else a generate prompt).
        names: The request fields the line set (after the defaults), sorted.
        values: Their validated values, in the order of ``names``.
        local_images: Edit only: the local image files, absolute, in order.
        local_positions: Edit only: the ``image_urls`` position of each local image.
        image_inputs: Edit only: the line's ``image_urls`` as given (paths, URLs),
            which the manifest records.
        meta: The line's ``metadata`` object, or ``None`` when it has none.
    """

    ordinal: int
    line: int
    key: str
    edit: bool
    names: tuple[str, ...]
    values: tuple[Any, ...]
    local_images: tuple[Path, ...] = ()
    local_positions: tuple[int, ...] = ()
    image_inputs: tuple[str, ...] = ()
    meta: dict[str, Any] | None = None

    @property
    def request(self) -> GenerateRequest | EditRequest:
        """The validated request; ``client_ref`` and ``metadata`` are not set.

        A local edit image is the placeholder ``https://local.invalid/<position>``.
        """
        return self.request_with()

    def request_with(self, **more: Any) -> GenerateRequest | EditRequest:
        """:attr:`request` with ``more`` fields set too (values the caller vouches for)."""
        cls = EditRequest if self.edit else GenerateRequest
        values = dict(zip(self.names, self.values, strict=True))
        values.update(more)
        return cls.model_construct(set(values), **values)

    @property
    def metadata(self) -> dict[str, Any]:
        """The line's free ``metadata`` object (may be empty)."""
        return {} if self.meta is None else self.meta

    @property
    def kind(self) -> Literal["generate", "edit"]:
        """``"edit"`` or ``"generate"``."""
        return "edit" if self.edit else "generate"

    def value(self, name: str) -> Any:
        """The value of request field ``name`` the line set, or ``None``."""
        try:
            return self.values[self.names.index(name)]
        except ValueError:
            return None
