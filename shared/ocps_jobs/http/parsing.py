"""Reading request bodies and query strings into validated models, with clear 4xx errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from flask import Request
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, MultipartDecoder, NeedData

from ..errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

__all__ = [
    "form_fields",
    "form_schema",
    "parse_body",
    "parse_natural",
    "read_body",
    "refuse_unknown_query",
    "require_utf8_fields",
    "require_utf8_multipart",
    "validation_message",
]

M = TypeVar("M", bound=BaseModel)

JSON_TYPES = frozenset({"application/json", "application/javascript", "text/json"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes (declared or actually sent)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(f"Request body is over the {limit}-byte limit")
    request.max_content_length = limit
    try:
        return request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLargeError(f"Request body is over the {limit}-byte limit") from None


def require_utf8_fields(encoded: bytes, what: str) -> None:
    """400 when URL-encoded fields (a query string, a form body) are not UTF-8.

    werkzeug would pass such bytes on as ``%XX`` text: a value the client never sent.
    """
    for field in encoded.split(b"&"):
        try:
            unquote_to_bytes(field.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"{what} is not UTF-8 once percent-decoded") from None


# Charsets a multipart field may declare: its bytes are UTF-8 whichever (ASCII is UTF-8).
_UTF8_CHARSETS = frozenset({"", "utf-8", "utf8", "ascii", "us-ascii"})


def require_utf8_multipart(data: bytes, boundary: str) -> None:
    """400 when a ``multipart/form-data`` field is not UTF-8, or declares another charset.

    werkzeug would decode such bytes with U+FFFD in place of each bad one (or as Latin-1,
    declared so): a value the client never sent. A malformed body is left to werkzeug,
    which then finds no fields.
    """
    try:
        decoder = MultipartDecoder(boundary.encode("ascii"))
        decoder.receive_data(data)
        decoder.receive_data(None)
        field: Field | None = None
        chunks: list[bytes] = []
        while not isinstance(event := decoder.next_event(), (Epilogue, NeedData)):
            if isinstance(event, Field):
                field, chunks = event, []
                charset = parse_options_header(event.headers.get("content-type", ""))[1]
                if charset.get("charset", "").lower() not in _UTF8_CHARSETS:
                    raise InvalidRequestError("A form field declares a charset other than UTF-8")
            elif isinstance(event, Data) and field is not None:
                chunks.append(event.data)
                if not event.more_data:
                    b"".join(chunks).decode("utf-8")
                    field = None
            elif not isinstance(event, Data):
                field = None  # a file: its bytes are its own
    except UnicodeDecodeError:
        raise InvalidRequestError("A form field is not UTF-8") from None
    except ValueError:
        return


def validation_message(error: ValidationError) -> str:
    """Up to five problems as ``field: reason``, never echoing the input back."""
    problems = []
    for item in error.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        problems.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(problems)
    return "Invalid request: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


# Any count or index the API takes is far below this; larger numbers are clamped to it, so
# "more than there is" stays a well-formed request without int() of a thousand digits.
_NATURAL_CEILING = 10**18


def refuse_unknown_query(names: Iterable[str], accepted: Sequence[str]) -> None:
    """A 400 naming the query parameters a route does not document (its OpenAPI says so)."""
    unknown = sorted(set(names) - set(accepted))
    if unknown:
        raise InvalidRequestError(
            f"Unknown query parameter(s): {', '.join(unknown)[:200]}; "
            f"accepted are {', '.join(accepted)}"
        )


def parse_natural(text: str) -> int | None:
    """A non-negative decimal integer in ASCII digits (spaces around allowed), else None."""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits) if len(digits) <= 18 else _NATURAL_CEILING


def _is_json_in_form(field: FieldInfo) -> bool:
    """A list field travels in a form as one JSON array."""
    return "list" in str(field.annotation)


_STRING_KEYWORDS = ("minLength", "maxLength", "pattern")


def form_schema(model: type[BaseModel]) -> dict[str, Any]:
    """JSON Schema of the model's fields as form fields.

    A text field keeps its length and pattern; ``null`` has no form spelling, so an optional
    one is the string alone; an integer is sent as its decimal text (OpenAPI's form
    serialization) and keeps its bounds; a list is a string of JSON (``contentMediaType``).
    """
    json_properties = model.model_json_schema()["properties"]
    properties: dict[str, dict[str, Any]] = {}
    for name, field in model.model_fields.items():
        declared = json_properties[name]
        if declared.get("type") == "integer":  # sent as its decimal text, bounds as declared
            schema = properties[name] = {
                key: declared[key] for key in ("type", "minimum", "maximum") if key in declared
            }
        else:
            schema = properties[name] = {"type": "string"}
        for branch in declared.get("anyOf", [declared]):
            if branch.get("type") == "string":
                schema.update((key, branch[key]) for key in _STRING_KEYWORDS if key in branch)
        notes = [field.description or ""]
        if _is_json_in_form(field):
            schema["contentMediaType"] = "application/json"
            notes.append("A JSON array.")
        if description := " ".join(note for note in notes if note):
            schema["description"] = description
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name, field in model.model_fields.items() if field.is_required()],
        "additionalProperties": False,
    }


def form_fields(request: Request) -> list[tuple[str, list[str]]]:
    """The body's form fields, each name with its values; 400 when they are not UTF-8."""
    if request.mimetype == "application/x-www-form-urlencoded":
        require_utf8_fields(request.get_data(cache=True), "A form field")
    elif request.mimetype == "multipart/form-data":
        boundary = request.mimetype_params.get("boundary", "")
        if boundary:
            require_utf8_multipart(request.get_data(cache=True), boundary)
    return list(request.form.lists())


def _form_payload(request: Request, model: type[BaseModel]) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for name, values in form_fields(request):
        if len(values) != 1:
            raise InvalidRequestError(f"Invalid request: {name[:64]} is given more than once")
        payload[name] = values[0]
    for name, field in model.model_fields.items():
        if name not in payload:
            continue
        if _is_json_in_form(field):
            try:
                payload[name] = json.loads(payload[name])
            except (ValueError, RecursionError):
                raise InvalidRequestError(
                    f"Invalid request: {name} must be a JSON array in a form field"
                ) from None
        elif field.annotation is int:
            number = parse_natural(payload[name])
            if number is None:
                raise InvalidRequestError(f"Invalid request: {name} must be an integer")
            payload[name] = number
    return payload


_UTF8_BOM = b"\xef\xbb\xbf"


def _utf8_text(data: bytes) -> str:
    """A JSON body as text: UTF-8 only (RFC 8259), its byte order mark ignored; else 400.

    ``json.loads`` of bytes would take UTF-16 and UTF-32 too. JSON text never holds a NUL
    byte (UTF-16 and UTF-32 of ASCII do, even where they pass for UTF-8).
    """
    try:
        if b"\x00" not in data:
            return data.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError:
        pass
    raise InvalidRequestError("Malformed JSON body: not UTF-8")


def parse_body(request: Request, model: type[M], limit: int) -> M:
    """A JSON object or form fields validated as ``model``."""
    data = read_body(request, limit)
    mimetype = request.mimetype
    payload: Any
    if mimetype in JSON_TYPES or (not mimetype and data.lstrip()[:1] == b"{"):
        try:
            payload = json.loads(_utf8_text(data))
        except (ValueError, RecursionError) as error:
            detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:200]
            raise InvalidRequestError(f"Malformed JSON body: {detail}") from None
        if not isinstance(payload, dict):
            raise InvalidRequestError("The JSON body must be an object")
    elif mimetype in FORM_TYPES:
        payload = _form_payload(request, model)
    elif not mimetype and not data:
        payload = {}
    else:
        raise UnsupportedMediaTypeError(
            f"Unsupported content type {mimetype[:100]!r}: send application/json or form fields"
        )
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise InvalidRequestError(validation_message(error)) from None
