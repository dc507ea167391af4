"""UWS 1.1 XML documents (job, job list, results, parameters) and the UWS error renderer."""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from flask import Response

from ..conventions import output_prefix
from ..errors import AuthenticationRequiredError, MethodNotAllowedError, OCPSError
from ..models import (
    JOB_PARAMETERS,
    MAX_JOB_OBJECT_RESULTS,
    JobRecord,
    ParameterKind,
    Phase,
    ResultFile,
)
from ..resultids import encode_result_id
from .render import provenance

__all__ = [
    "ENV_ENTRY",
    "OCPS_NS",
    "UWS_NS",
    "UWS_VERSION",
    "job_document",
    "job_list_document",
    "parameters_document",
    "plain_text",
    "render_uws_error",
    "results_document",
    "text_response",
    "uws_time",
    "xml_response",
]

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
# Our own elements inside ``jobInfo`` (which UWS leaves to the implementation).
OCPS_NS = "urn:ocps-jobs"
UWS_VERSION = "1.1"
XML_TYPE = "text/xml"
TEXT_TYPE = "text/plain"
# One environment variable as a UWS parameter, ``NAME=value``: read at creation, shown after.
ENV_ENTRY = "env"

# pyvo reads attributes by their literal prefixed names (``xlink:href``), so the prefixes
# are fixed. Registering a prefix is idempotent process state, not configuration.
for _prefix, _uri in (("uws", UWS_NS), ("xlink", XLINK_NS), ("xsi", XSI_NS), ("ocps", OCPS_NS)):
    ET.register_namespace(_prefix, _uri)

# Characters XML 1.0 cannot carry (controls, lone surrogates, U+FFFE/U+FFFF): a command or
# an error message holding one (an ANSI colour code in stderr) is shown with U+FFFD instead.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# What a plain-text value (``/error``) leaves out: terminal escape sequences (an ANSI colour
# code from stderr), then every other control character but tab and newline.
_TERMINAL_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-_]?)")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(value: str) -> str:
    """``value`` with every character XML 1.0 cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


def plain_text(value: str) -> str:
    """``value`` without terminal escapes and control characters (tab and newline kept)."""
    return _CONTROL.sub("", _TERMINAL_ESCAPE.sub("", value))


def uws_time(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS[.fff]Z`` in UTC."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def _uws(name: str) -> str:
    return f"{{{UWS_NS}}}{name}"


def _child(parent: ET.Element, name: str, text: str | None, nillable: bool = False) -> None:
    """A child element with text; ``xsi:nil="true"`` for a nillable one without a value."""
    element = ET.SubElement(parent, _uws(name))
    if text is None:
        if nillable:
            element.set(f"{{{XSI_NS}}}nil", "true")
    else:
        element.text = clean_text(text)


def _time_child(parent: ET.Element, name: str, value: datetime | None) -> None:
    _child(parent, name, uws_time(value) if value is not None else None, nillable=True)


def _serialize(root: ET.Element) -> bytes:
    """The document as UTF-8 bytes, every CR as ``&#13;``.

    ElementTree escapes a CR in an attribute but writes it raw in text, where every XML
    parser reads it as a newline: a value holding one would come back changed. A CR
    byte of the output is always one of a text's (UTF-8 never uses 0x0D otherwise).
    """
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data.replace(b"\r", b"&#13;")


def xml_response(root: ET.Element, status: int = 200) -> Response:
    """An XML document as ``text/xml; charset=utf-8``."""
    return Response(_serialize(root), status=status, mimetype=XML_TYPE)


def text_response(text: str, status: int = 200) -> Response:
    """A UWS single-value resource (``/phase``, ``/owner``, ...) as UTF-8 ``text/plain``."""
    return Response(text.encode("utf-8", "replace"), status=status, mimetype=TEXT_TYPE)


def render_uws_error(error: OCPSError) -> Response:
    """The error's message as ``text/plain`` with its status (DALI-style error body)."""
    response = text_response(error.message + "\n", status=error.status)
    if isinstance(error, MethodNotAllowedError):
        response.headers["Allow"] = ", ".join(error.allowed)
    if isinstance(error, AuthenticationRequiredError):
        response.headers["WWW-Authenticate"] = 'Bearer realm="ocps-jobs"'
    return response


def result_name(record: JobRecord, result: ResultFile) -> str:
    """A result's UWS id: its path relative to ``$JOB_OUTPUT_DIR`` (unique in the job)."""
    prefix = output_prefix(record.job_id)
    if result.key.startswith(prefix):
        return result.key[len(prefix) :]
    return posixpath.basename(result.key)


def results_element(record: JobRecord, results: list[ResultFile], download_base: str) -> ET.Element:
    """``<uws:results>``: each result with a literal absolute ``xlink:href`` that downloads it."""
    element = ET.Element(_uws("results"))
    for result in results:
        ET.SubElement(
            element,
            _uws("result"),
            {
                "id": clean_text(result_name(record, result)),
                f"{{{XLINK_NS}}}type": "simple",
                f"{{{XLINK_NS}}}href": download_base + encode_result_id(result.key),
                "size": str(result.size),
                "mime-type": clean_text(result.content_type),
            },
        )
    return element


def parameters_element(record: JobRecord) -> ET.Element:
    """``<uws:parameters>``: what the job was created with, by the UWS creation names.

    Each kept job parameter (``JOB_PARAMETERS``) that is set and not its default, in their
    order, then one ``env`` parameter ``NAME=value`` per variable the caller gave, in order.
    """
    values: list[tuple[str, str]] = []
    entries: list[tuple[str, str]] = []
    for declared in JOB_PARAMETERS:
        if not declared.kept:
            continue
        value = getattr(record.parameters, declared.name)
        if declared.kind is ParameterKind.ENVIRONMENT:
            entries.extend((ENV_ENTRY, f"{entry.name}={entry.value}") for entry in value)
        elif value is not None and (declared.required or value != declared.default):
            values.append((declared.uws, str(value)))
    values.extend(entries)
    element = ET.Element(_uws("parameters"))
    for name, value in values:
        parameter = ET.SubElement(element, _uws("parameter"), {"id": name})
        parameter.text = clean_text(value)
    return element


def _error_summary(parent: ET.Element, record: JobRecord) -> None:
    if record.phase not in (Phase.ERROR, Phase.ABORTED) or not record.error_message:
        return
    summary = ET.SubElement(parent, _uws("errorSummary"), {"type": "fatal", "hasDetail": "true"})
    _child(summary, "message", record.error_message)


def job_document(
    record: JobRecord,
    results: list[ResultFile],
    download_base: str,
    results_url: str | None = None,
    result_count: int | None = None,
) -> ET.Element:
    """``<uws:job version="1.1">`` with every element of ``JobSummary`` in schema order.

    Its ``<uws:results>`` holds the first ``MAX_JOB_OBJECT_RESULTS``; with more
    (``result_count``, or else ``results`` is every one), its ``jobInfo`` has
    ``<ocps:resultCount>`` and ``<ocps:results xlink:href>``, the paginated JSON listing.
    """
    root = ET.Element(_uws("job"), {"version": UWS_VERSION})
    _child(root, "jobId", record.job_id)
    _child(root, "runId", record.run_id)
    _child(root, "ownerId", record.owner or None, nillable=True)
    _child(root, "phase", record.phase.uws)
    _child(root, "quote", None, nillable=True)
    _child(root, "creationTime", uws_time(record.creation_time))
    _time_child(root, "startTime", record.start_time)
    _time_child(root, "endTime", record.end_time)
    _child(root, "executionDuration", str(record.execution_duration or 0))
    _time_child(root, "destruction", record.destruction)
    root.append(parameters_element(record))
    root.append(results_element(record, results[:MAX_JOB_OBJECT_RESULTS], download_base))
    _error_summary(root, record)
    count = len(results) if result_count is None else result_count
    more = count if count > MAX_JOB_OBJECT_RESULTS else None
    _job_info(root, record, more, results_url)
    return root


def _job_info(
    parent: ET.Element, record: JobRecord, result_count: int | None, results_url: str | None
) -> None:
    """``<uws:jobInfo>``: what ran, why a queued job waits, where all its results are.

    The results' count and link are there only when the job document does not list them all.
    """
    known = provenance(record)
    if not known and not record.waiting_reason and result_count is None:
        return
    info = ET.SubElement(parent, _uws("jobInfo"))
    for name, value in known.items():
        _child(info, name, value)
    if record.waiting_reason:
        ET.SubElement(info, f"{{{OCPS_NS}}}waitingReason").text = clean_text(record.waiting_reason)
    if result_count is not None:
        ET.SubElement(info, f"{{{OCPS_NS}}}resultCount").text = str(result_count)
        if results_url is not None:
            link = {f"{{{XLINK_NS}}}type": "simple", f"{{{XLINK_NS}}}href": results_url}
            ET.SubElement(info, f"{{{OCPS_NS}}}results", link)


def job_list_document(records: list[JobRecord], job_base: str) -> ET.Element:
    """``<uws:jobs version="1.1">``: a ``jobref`` per job, linking to it."""
    root = ET.Element(_uws("jobs"), {"version": UWS_VERSION})
    for record in records:
        reference = ET.SubElement(
            root,
            _uws("jobref"),
            {
                "id": record.job_id,
                f"{{{XLINK_NS}}}type": "simple",
                f"{{{XLINK_NS}}}href": job_base + record.job_id,
            },
        )
        _child(reference, "phase", record.phase.uws)
        _child(reference, "runId", record.run_id)
        _child(reference, "ownerId", record.owner or None, nillable=True)
        _child(reference, "creationTime", uws_time(record.creation_time))
    return root


def results_document(
    record: JobRecord,
    results: list[ResultFile],
    download_base: str,
    result_count: int | None = None,
    listing_url: str | None = None,
) -> ET.Element:
    """``<uws:results>`` as the root of ``/results``: the first ``MAX_JOB_OBJECT_RESULTS``.

    With more (``result_count``), a comment says how many and where the paginated JSON
    listing of every one is (the schema allows only ``<uws:result>`` in the element; the
    handler's ``Link`` header says it too).
    """
    element = results_element(record, results[:MAX_JOB_OBJECT_RESULTS], download_base)
    count = len(results) if result_count is None else result_count
    if count > MAX_JOB_OBJECT_RESULTS:
        where = f": every one is listed, in pages, at {listing_url}" if listing_url else ""
        note = f" the first {MAX_JOB_OBJECT_RESULTS} of {count} results{where} "
        element.insert(0, ET.Comment(clean_text(note.replace("--", "%2D%2D"))))
    return element


def parameters_document(record: JobRecord) -> ET.Element:
    """``<uws:parameters>`` as the root of ``/parameters``."""
    return parameters_element(record)
