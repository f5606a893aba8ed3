"""Batch input files: made from plain prompts, checked before uploading, prepared for a model.

- :func:`make_jsonl` — a plain text file (one prompt a line) or a CSV/TSV file (a prompt column)
  as batch input lines (https://platform.openai.com/docs/guides/batch, "Prepare your batch file");
- :func:`check_input` — what the gateway would refuse an input file for, found before uploading;
- :func:`prepare_input` / :func:`set_model` — a file ready to upload for one model.
"""

from __future__ import annotations

import codecs
import csv
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ENDPOINTS",
    "BatchInputError",
    "InputCheck",
    "PreparedInput",
    "check_input",
    "input_kind",
    "looks_like_prompts",
    "make_jsonl",
    "make_jsonl_from",
    "prepare_input",
    "set_model",
    "write_lines",
]

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")

Kind = Literal["text", "csv", "tsv"]


class BatchInputError(ValueError):
    """An input file (or a source for one) that cannot be used, said in one line for the user."""


# --- making input files ------------------------------------------------------------------------


def input_kind(path: Path) -> Kind:
    """How :func:`make_jsonl` reads `path`: by its suffix, .csv / .tsv, else one prompt a line."""
    suffix = path.suffix.lower()
    return "csv" if suffix == ".csv" else "tsv" if suffix == ".tsv" else "text"


def make_jsonl(
    source: Iterable[str],
    model: str | None = None,
    *,
    kind: Kind = "text",
    endpoint: str = "/v1/chat/completions",
    system: str | None = None,
    max_tokens: int | None = None,
    column: str | None = None,
    id_column: str | None = None,
) -> Iterator[str]:
    """Batch input lines, one per prompt: ``{"custom_id", "method": "POST", "url", "body"}``.

    ``text``: every line that is not blank is one prompt, its ``custom_id`` ``line-N`` (its line
    number in the source). ``csv`` / ``tsv``: a header row, then one prompt a row from `column`
    (default: ``prompt``, or the only column); ``custom_id`` is `id_column` (default: a
    ``custom_id`` or ``id`` column if there is one; values must be unique) or ``row-N`` (the Nth
    data row). Rows with an empty prompt are left out. `source` yields lines as a text file does
    (for CSV, open it with ``newline=""`` so quoted fields may hold line breaks)."""
    if endpoint not in ENDPOINTS:
        raise BatchInputError(f"endpoint {endpoint!r} is not one of {', '.join(ENDPOINTS)}")
    if system is not None and endpoint != "/v1/chat/completions":
        raise BatchInputError("a system prompt needs the /v1/chat/completions endpoint")
    if max_tokens is not None and (endpoint == "/v1/embeddings" or max_tokens < 1):
        raise BatchInputError("max_tokens must be at least 1, and embeddings take none")
    prompts = _text_prompts(source) if kind == "text" else _csv_prompts(source, kind, column, id_column)
    for custom_id, prompt in prompts:
        body: dict[str, Any] = {} if model is None else {"model": model}
        if endpoint == "/v1/chat/completions":
            system_message = [{"role": "system", "content": system}] if system is not None else []
            body["messages"] = [*system_message, {"role": "user", "content": prompt}]
        else:
            body["prompt" if endpoint == "/v1/completions" else "input"] = prompt
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        line = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}
        yield json.dumps(line, ensure_ascii=False)


def make_jsonl_from(path: Path, model: str | None = None, **options: Any) -> Iterator[str]:
    """:func:`make_jsonl` over a file (UTF-8, with or without a byte-order mark), by its suffix."""
    kind = input_kind(path)
    try:
        with path.open(encoding="utf-8-sig", newline="" if kind != "text" else None) as f:
            yield from make_jsonl(f, model, kind=kind, **options)
    except UnicodeDecodeError:
        raise BatchInputError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _text_prompts(source: Iterable[str]) -> Iterator[tuple[str, str]]:
    for n, line in enumerate(source, 1):
        text = line.rstrip("\r\n")
        if n == 1:
            text = text.removeprefix(codecs.BOM_UTF8.decode())
        if text.strip():
            yield f"line-{n}", text


def _csv_prompts(
    source: Iterable[str], kind: Kind, column: str | None, id_column: str | None
) -> Iterator[tuple[str, str]]:
    reader = csv.DictReader(iter(source), delimiter="\t" if kind == "tsv" else ",")
    try:
        header = reader.fieldnames
        if not header:
            raise BatchInputError(f"the {kind.upper()} file has no header row")
        header = reader.fieldnames = [header[0].removeprefix("\ufeff"), *header[1:]]
        names = ", ".join(header)
        if column is None:
            column = "prompt" if "prompt" in header else header[0] if len(header) == 1 else None
            if column is None:
                raise BatchInputError(f"which column holds the prompts? give --column, one of: {names}")
        elif column not in header:
            raise BatchInputError(f"no column {column!r}; the columns are: {names}")
        if id_column is None:
            id_column = next((c for c in ("custom_id", "id") if c in header and c != column), None)
        elif id_column not in header:
            raise BatchInputError(f"no column {id_column!r}; the columns are: {names}")
        seen: set[str] = set()
        for n, row in enumerate(reader, 1):
            prompt = row.get(column)
            if not isinstance(prompt, str) or not prompt.strip():
                continue
            custom_id = f"row-{n}"
            if id_column is not None:
                custom_id = (row.get(id_column) or "").strip()
                if not custom_id:
                    raise BatchInputError(f"row {n} has no {id_column}")
            if custom_id in seen:
                raise BatchInputError(f"row {n}: {id_column} {custom_id!r} is used twice; ids must be unique")
            seen.add(custom_id)
            yield custom_id, prompt
    except csv.Error as exc:
        raise BatchInputError(f"{kind.upper()} line {reader.reader.line_num}: {exc}") from None


def write_lines(lines: Iterable[str], dest: Path) -> int:
    """Write `lines` to `dest` as JSONL (UTF-8, "\\n"), whole or not at all; how many."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    count = 0
    try:
        with tmp.open("x", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
                count += 1
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


# --- checking input files ----------------------------------------------------------------------


@dataclass
class InputCheck:
    """What :func:`check_input` found: lines, the models they ask for, and the first problems."""

    lines: int = 0
    models: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def check_input(path: Path, endpoint: str, *, model: str | None = None, max_problems: int = 10) -> InputCheck:
    """Check a batch input file against the OpenAI format before uploading it.

    Each line must be a JSON object with a unique string ``custom_id``, ``"method": "POST"``, the
    batch's `endpoint` as ``url`` and an object ``body`` that does not ask to stream; and a batch
    runs one model, so the lines must name the same ``model`` — unless `model` is given, which
    will replace theirs (:func:`set_model`). The gateway checks the same
    (:mod:`gateway.batch.validate`) and more (that you may use the model)."""
    check = InputCheck()
    ids: set[str] = set()

    def problem(text: str) -> None:
        if len(check.problems) < max_problems:
            check.problems.append(text)

    try:
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                check.lines = n
                try:
                    line = json.loads(raw)
                except (UnicodeDecodeError, ValueError):
                    problem(f"line {n} is empty" if not raw.strip() else f"line {n} is not JSON")
                    continue
                if not isinstance(line, dict):
                    problem(f"line {n} is not a JSON object")
                    continue
                custom_id, body = line.get("custom_id"), line.get("body")
                if not isinstance(custom_id, str) or not custom_id:
                    problem(f"line {n} has no custom_id")
                elif custom_id in ids:
                    problem(f"line {n}: custom_id {custom_id!r} is used twice")
                else:
                    ids.add(custom_id)
                if line.get("method") != "POST":
                    problem(f'line {n}: method must be "POST"')
                if line.get("url") != endpoint:
                    problem(f"line {n}: url is {line.get('url')!r}, not the batch's endpoint {endpoint!r}")
                if not isinstance(body, dict):
                    problem(f"line {n} has no body object")
                    continue
                if body.get("stream"):
                    problem(f"line {n}: a batch cannot stream (remove body.stream)")
                if isinstance(body.get("model"), str):
                    check.models.add(body["model"])
                elif model is None:
                    problem(f"line {n}: body has no model (give --model)")
    except OSError as exc:
        raise BatchInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if check.lines == 0:
        problem(f"{path} is empty")
    if model is None and len(check.models) > 1:
        names = ", ".join(sorted(check.models)[:5])
        problem(f"the lines ask for {len(check.models)} models ({names}); a batch runs one: give --model")
    return check


@dataclass
class PreparedInput:
    """What :func:`prepare_input` made of a file: the file to upload, under which name, and what
    :func:`check_input` found in it (upload it only if ``check.problems`` is empty)."""

    path: Path
    filename: str
    check: InputCheck


def prepare_input(
    source: Path,
    workdir: Path,
    endpoint: str,
    *,
    model: str | None = None,
    make: dict[str, Any] | None = None,
) -> PreparedInput:
    """The batch input file for `source`, written into `workdir` when it has to be changed.

    With `make` (:func:`make_jsonl`'s options), `source` holds prompts and is converted first.
    With `model`, every line is made to ask for it (:func:`set_model`)."""
    path, filename = source, source.name
    if make is not None:
        path = workdir / source.with_suffix(".jsonl").name
        filename = path.name
        if write_lines(make_jsonl_from(source, model, endpoint=endpoint, **make), path) == 0:
            raise BatchInputError(f"{source} has no prompts")
    check = check_input(path, endpoint, model=model)
    if not check.problems and model is not None and check.models != {model}:
        changed = workdir / f"{source.stem}.{model.replace('/', '_')}.jsonl"
        set_model(path, model, changed)
        path = changed
    return PreparedInput(path, filename, check)


def looks_like_prompts(path: Path) -> bool:
    """A .txt, .csv or .tsv file is taken to hold prompts (for :func:`make_jsonl`), not requests."""
    return path.suffix.lower() in (".txt", ".csv", ".tsv")


def set_model(path: Path, model: str, dest: Path) -> int:
    """Copy a (checked) input file to `dest` with every line's ``body.model`` set to `model`."""

    def lines() -> Iterator[str]:
        with path.open("rb") as f:
            for raw in f:
                line = json.loads(raw)
                line["body"] = {**line["body"], "model": model}
                yield json.dumps(line, ensure_ascii=False)

    return write_lines(lines(), dest)
