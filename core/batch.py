"""Reading and validating a batch of cover requests from a CSV or JSON-lines file.

    from kie_covers.core.batch import read_batch

    plan = read_batch("songs.csv", default_callback_url="https://app.example/cb")
    for bad in plan.bad:                      # every bad line, with its line number
        print(bad.line_no, bad.message)
    plan.rows[0].music_task_id                # the valid requests, in file order

Pure: nothing here touches Redis, Celery or the settings, so a batch can be
checked (and every bad line shown) before anything is queued; enqueueing and
following a batch is `kie_covers.services.batch`.

Input formats (chosen by the file suffix ``.csv`` / ``.jsonl`` / ``.json`` /
``.ndjson``, else by the first non-blank line: ``{`` means JSON lines):

- CSV: ``taskId[,callBackUrl]`` per line; an optional header row names the
  columns (``taskId``/``task_id``, ``callBackUrl``/``callback_url``, any case,
  either order). Cells are stripped of surrounding spaces.
- JSON lines: one ``{"taskId": ..., "callBackUrl": ...}`` object per line.

Either format may also give a line its own ``priority`` and ``tenant`` (JSON keys,
or CSV header columns); lines without them take the batch's (`enqueue_batch`).

Blank lines are ignored in both; line numbers count every physical line from 1.
A missing (or empty) callBackUrl takes the batch's default callback URL.

Input is read line by line, never whole, and capped: a line longer than
`MAX_LINE_BYTES` (8 KiB), more than `MAX_BATCH_LINES` (100,000) lines or more than
`MAX_BATCH_BYTES` (64 MiB) in all refuses the whole batch (`BatchTooLarge`) as
soon as the cap is passed, so ``--from /dev/zero`` stops after 8 KiB.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kie_covers.core.errors import InvalidPayload
from kie_covers.core.schemas import validate_cover_request

#: Format names a `BatchPlan` can have.
BatchFormat = Literal["csv", "jsonl"]

#: File suffixes that choose the format without looking at the content.
SUFFIX_FORMATS: dict[str, BatchFormat] = {
    ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
}

#: Longest line of a batch, in bytes without its line ending (characters for lines
#: given as ``str``). A valid line is a task id (128) and a URL (2,048) with quotes and
#: keys: far under this.
MAX_LINE_BYTES = 8 * 1024
#: Most physical lines (blank ones too) a batch may have.
MAX_BATCH_LINES = 100_000
#: Most bytes a batch may have in all, line endings included (64 MiB).
MAX_BATCH_BYTES = 64 * 1024 * 1024

#: CSV header names (lower-cased) -> the field name Kie spells.
CSV_COLUMNS: dict[str, str] = {
    "taskid": "taskId", "task_id": "taskId",
    "callbackurl": "callBackUrl", "callback_url": "callBackUrl",
    "priority": "priority", "tenant": "tenant",
}
#: Optional fields a line may leave empty (then the batch's value holds).
_LANE_FIELDS = ("priority", "tenant")

@dataclass(frozen=True)
class BatchRow:
    """One valid cover request of a batch.

    Attributes:
        line_no: the physical line it came from (1-based).
        music_task_id: the music task id (the line's ``taskId``), validated.
        callback_url: the app's callback URL (its own or the batch default), validated.
        priority: the line's own priority lane, validated; None (the default): the
            batch's.
        tenant: the line's own tenant, validated; None (the default): the batch's.
    """

    line_no: int
    music_task_id: str
    callback_url: str
    priority: str | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class BadLine:
    """A line of a batch that cannot be enqueued.

    Attributes:
        line_no: the physical line (1-based).
        fields: field -> messages, as `InvalidPayload.fields` gives them; besides
            ``taskId`` and ``callBackUrl`` the names ``json`` and ``csv`` (the line
            does not parse), ``line`` (not UTF-8) and ``header`` (a CSV header
            names unknown columns or none for taskId).
        message: all of it in one line, ``field: message; field: message``.
    """

    line_no: int
    fields: dict[str, list[str]]
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"line": N, "fields": {...}, "message": "..."}``."""
        return {"line": self.line_no, "fields": self.fields, "message": self.message}


#: A parsed line: (line number, the request's fields, or why the line is bad).
_Parsed = tuple[int, dict[str, Any] | BadLine]


@dataclass
class BatchPlan:
    """What `read_batch` found: the rows to enqueue and the lines refused.

    Attributes:
        rows: valid requests, in file order (one per music task id).
        bad: refused lines, in file order.
        format: ``csv`` or ``jsonl`` (default ``csv``).
        source: the path read, or ``<lines>`` (the default) for an iterable of lines.
    """

    rows: list[BatchRow] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    format: BatchFormat = "csv"
    source: str = "<lines>"

    @property
    def ok(self) -> bool:
        """True when no line was refused."""
        return not self.bad


class BatchRefused(InvalidPayload):
    """A batch with bad lines, refused as a whole: nothing was enqueued.

    A subclass of `kie_covers.core.errors.InvalidPayload` so code that already
    catches bad input from `enqueue_cover` catches this too. ``.fields`` keys are
    ``"line N: field"``; ``.bad_lines`` gives the `BadLine` objects back.
    Build it with `BatchRefused.from_bad_lines`; the constructor keeps
    `CoverError`'s arguments so the error pickles like every other.
    """

    @classmethod
    def from_bad_lines(cls, bad: Sequence[BadLine], source: str = "<lines>") -> BatchRefused:
        """The refusal of a batch read from `source` (default ``<lines>``) with these bad
        lines."""
        fields_ = {f"line {b.line_no}: {name}": list(msgs)
                   for b in bad for name, msgs in b.fields.items()}
        first = bad[0] if bad else None
        where = f"; first at line {first.line_no}: {first.message}" if first else ""
        return cls(
            f"batch {source} refused: {len(bad)} bad line{'s' if len(bad) != 1 else ''}"
            f"{where}; nothing enqueued",
            detail={"fields": fields_, "bad_lines": [b.to_dict() for b in bad]},
        )

    @property
    def bad_lines(self) -> list[BadLine]:
        """The refused lines, in file order."""
        return [BadLine(int(d["line"]), dict(d["fields"]), str(d["message"]))
                for d in self.detail.get("bad_lines", [])]


class BatchTooLarge(InvalidPayload):
    """A batch over a size cap (`MAX_LINE_BYTES`, `MAX_BATCH_LINES`,
    `MAX_BATCH_BYTES`), refused as a whole while reading: nothing was enqueued.

    ``.fields`` has one key: ``"line N"`` for a line too long, else ``"batch"``.
    """


# --- reading ----------------------------------------------------------------------


def read_batch(path_or_lines: str | os.PathLike[str] | Iterable[str] | Iterable[bytes],
               default_callback_url: str | None = None) -> BatchPlan:
    """Read and validate a batch; nothing is enqueued.

    Args:
        path_or_lines: a file path (``str`` or `os.PathLike`; a ``str`` is always a
            path), or an iterable of lines (``str`` or UTF-8 ``bytes``, with or
            without line endings), e.g. an open file or ``sys.stdin.buffer``.
        default_callback_url: the callBackUrl of every line that has none; default
            None (then such lines are bad).

    Returns:
        A `BatchPlan` with every valid row and every bad line. Lines that do not
        parse, fail `validate_cover_request`, or repeat a music task id of an
        earlier valid line (``taskId: duplicate of line N``) are bad lines.

    Raises:
        InvalidPayload: `default_callback_url` itself is not a valid callback URL
            (``fields == {"callBackUrl": [...]}``), rather than one bad line per row.
        BatchTooLarge: a line is longer than `MAX_LINE_BYTES`, or the batch has more
            than `MAX_BATCH_LINES` lines or `MAX_BATCH_BYTES` bytes; raised as soon as
            the cap is passed, without reading further.
        OSError: the file cannot be read.
    """
    if default_callback_url is not None:
        _check_default(default_callback_url)
    fmt: BatchFormat | None = None
    bad: list[BadLine] = []
    if isinstance(path_or_lines, str | os.PathLike):
        path = Path(path_or_lines)
        source = str(path)
        fmt = SUFFIX_FORMATS.get(path.suffix.lower())
        # Bytes, read and decoded line by line: one line that is not UTF-8 is one bad
        # line, not a failure of the whole file.
        with path.open("rb") as handle:
            lines = _text_lines(_physical_lines(capped_lines(handle)), bad)
    else:
        source = "<lines>"
        lines = _text_lines(_physical_lines(capped_lines(path_or_lines)), bad)
    if fmt is None:
        fmt = "jsonl" if lines and lines[0][1].lstrip().startswith("{") else "csv"
    parsed = _parse_jsonl(lines) if fmt == "jsonl" else _parse_csv(lines)
    plan = BatchPlan(format=fmt, source=source)
    _collect(plan, parsed, default_callback_url, bad)
    plan.bad = sorted(bad, key=lambda b: b.line_no)
    return plan


def _check_default(callback_url: str) -> None:
    """Raise `InvalidPayload` (on ``callBackUrl``) unless the default URL is valid."""
    try:
        validate_cover_request({"taskId": "x", "callBackUrl": callback_url})
    except InvalidPayload as invalid:
        messages = invalid.fields.get("callBackUrl", [invalid.message])
        raise InvalidPayload(
            f"invalid default callback URL: {' '.join(messages)}",
            detail={"fields": {"callBackUrl": messages}}) from None


def capped_lines(source: Iterable[str] | Iterable[bytes]) -> Iterator[str | bytes]:
    """The lines of `source`, each with its line ending, within the batch caps.

    A source with ``readline`` (an open file, ``sys.stdin.buffer``) is read with a
    bounded ``readline``, so a line without end (``/dev/zero``) costs at most
    `MAX_LINE_BYTES` of memory before it is refused.

    Raises:
        BatchTooLarge: a cap is passed (see `read_batch`).
    """
    limit = MAX_LINE_BYTES + 2  # room for the line's own "\r\n"
    readline = getattr(source, "readline", None)
    chunks: Iterable[str | bytes] = (
        _until_empty(readline, limit) if callable(readline) else source)
    total = 0
    for line_no, chunk in enumerate(chunks, start=1):
        if line_no > MAX_BATCH_LINES:
            raise _too_large("batch", f"more than {MAX_BATCH_LINES:,} lines; split the batch")
        total += len(chunk)
        if total > MAX_BATCH_BYTES:
            raise _too_large("batch", f"more than {MAX_BATCH_BYTES // (1024 * 1024)} MiB; "
                             "split the batch")
        if isinstance(chunk, bytes):
            ends, body = chunk.endswith(b"\n"), len(chunk.rstrip(b"\r\n"))
        else:
            ends, body = chunk.endswith("\n"), len(chunk.rstrip("\r\n"))
        # A full-size read without its newline means the line goes on past the cap.
        if body > MAX_LINE_BYTES or (not ends and len(chunk) >= limit):
            raise _too_large(f"line {line_no}", f"longer than {MAX_LINE_BYTES} bytes; "
                             "is this a batch of cover requests?")
        yield chunk


def _physical_lines(chunks: Iterable[str | bytes]) -> Iterator[str | bytes]:
    """Split bytes lines at a lone ``\r`` too (old Mac line ends), as
    ``bytes.splitlines`` does; ``str`` lines are taken as the caller split them."""
    for chunk in chunks:
        if isinstance(chunk, bytes) and b"\r" in chunk.rstrip(b"\r\n"):
            yield from chunk.splitlines()
        else:
            yield chunk


def _until_empty(readline: Callable[[int], str | bytes], limit: int
                 ) -> Iterator[str | bytes]:
    while chunk := readline(limit):
        yield chunk


def _too_large(name: str, message: str) -> BatchTooLarge:
    return BatchTooLarge(f"batch refused: {name}: {message}; nothing enqueued",
                         detail={"fields": {name: [message]}})


def _text_lines(raw_lines: Iterable[str | bytes], bad: list[BadLine]
                ) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines; lines not UTF-8 go to `bad`."""
    lines: list[tuple[int, str]] = []
    for line_no, raw in enumerate(raw_lines, start=1):
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.append(_bad(line_no, "line", f"not UTF-8 text (byte {err.start + 1})"))
                continue
        else:
            text = raw
        text = text.rstrip("\r\n")
        if line_no == 1:
            text = text.removeprefix("\ufeff")  # a BOM from spreadsheet exports
        if text.strip():
            lines.append((line_no, text))
    return lines


def _collect(plan: BatchPlan, parsed: Sequence[_Parsed], default_callback_url: str | None,
             bad: list[BadLine]) -> None:
    """Validate each parsed line: valid rows go to `plan.rows`, the rest to `bad`."""
    first_line: dict[str, int] = {}  # music task id -> the line that first named it
    for line_no, item in parsed:
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        row = _validate(line_no, item, default_callback_url)
        if isinstance(row, BadLine):
            bad.append(row)
        elif row.music_task_id in first_line:
            # enqueue_cover would return the same job anyway, but a repeated id in a
            # file is usually a mistake (a wrong column, a bad join) worth showing.
            bad.append(_bad(line_no, "taskId",
                            f"duplicate of line {first_line[row.music_task_id]}"))
        else:
            first_line[row.music_task_id] = line_no
            plan.rows.append(row)


def _bad(line_no: int, name: str, message: str) -> BadLine:
    return BadLine(line_no, {name: [message]}, f"{name}: {message}")


def _parse_jsonl(lines: Sequence[tuple[int, str]]) -> list[_Parsed]:
    out: list[_Parsed] = []
    for line_no, text in lines:
        try:
            value = json.loads(text)
        except RecursionError:  # a line of ten thousand "[": refused, not a crash
            out.append((line_no, _bad(line_no, "json", "not valid JSON: nested too deeply")))
            continue
        except ValueError as err:
            where = (f" (column {err.colno})" if isinstance(err, json.JSONDecodeError)
                     else "")
            reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
            out.append((line_no, _bad(line_no, "json", f"not valid JSON: {reason}{where}")))
            continue
        if not isinstance(value, dict):
            out.append((line_no, _bad(
                line_no, "json",
                f"expected one object per line like {{\"taskId\": ..., \"callBackUrl\": ...}}, "
                f"got {_json_type(value)}")))
            continue
        out.append((line_no, value))
    return out


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def _parse_csv(lines: Sequence[tuple[int, str]]) -> list[_Parsed]:
    out: list[_Parsed] = []
    columns: list[str | None] | None = None  # from the header; None = positional
    for index, (line_no, text) in enumerate(lines):
        try:
            # One physical line at a time, strictly: an unbalanced quote is this
            # line's error instead of swallowing the rest of the file into one field.
            cells = [c.strip() for c in next(csv.reader([text], strict=True))]
        except csv.Error as err:
            out.append((line_no, _bad(line_no, "csv", f"not valid CSV: {err}")))
            continue
        if index == 0 and any(c.lower() in CSV_COLUMNS for c in cells):
            columns, problem = _header(cells)
            if problem:
                out.append((line_no, _bad(line_no, "header", problem)))
            continue
        out.append((line_no, _csv_row(line_no, cells, columns)))
    return out


def _csv_row(line_no: int, cells: Sequence[str], columns: Sequence[str | None] | None
             ) -> dict[str, Any] | BadLine:
    """One CSV row's fields, by the header's `columns` (None: ``taskId[,callBackUrl]``)."""
    if columns is None:
        if len(cells) > 2:
            return _bad(line_no, "csv", f"expected taskId[,callBackUrl], got {len(cells)} cells")
        return dict(zip(("taskId", "callBackUrl"), cells, strict=False))
    if len(cells) > len(columns):
        return _bad(line_no, "csv",
                    f"{len(cells)} cells, but the header names {len(columns)} columns")
    return {name: cell for name, cell in zip(columns, cells, strict=False) if name}


def _header(cells: Sequence[str]) -> tuple[list[str | None], str]:
    """Column names of a header row, and what is wrong with it ("" if nothing)."""
    columns: list[str | None] = []
    problems: list[str] = []
    for cell in cells:
        name = CSV_COLUMNS.get(cell.lower())
        if name is None:
            problems.append(f"unknown column {cell!r}")
        elif name in columns:
            problems.append(f"column {cell!r} given twice")
            name = None
        columns.append(name)
    if "taskId" not in columns:
        problems.append("no taskId column")
    if problems:
        problems.append("expected taskId[,callBackUrl]")
    return columns, "; ".join(problems)


def _validate(line_no: int, item: Mapping[str, Any], default_callback_url: str | None
              ) -> BatchRow | BadLine:
    data = dict(item)
    for name in _LANE_FIELDS:
        if data.get(name) in (None, ""):
            data.pop(name, None)
    if data.get("callBackUrl") in (None, ""):
        data.pop("callBackUrl", None)
        if default_callback_url is not None:
            data["callBackUrl"] = default_callback_url
    try:
        clean = validate_cover_request(data)
    except InvalidPayload as invalid:
        fields_ = invalid.fields
        if "callBackUrl" not in data and "callBackUrl" in fields_:
            fields_["callBackUrl"] = ["missing: give the line one, or a default callback URL"]
        message = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in sorted(fields_.items()))
        return BadLine(line_no, fields_, message)
    return BatchRow(line_no, clean["taskId"], clean["callBackUrl"],
                    clean["priority"] if "priority" in data else None, clean["tenant"])
