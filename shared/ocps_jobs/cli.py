"""The ``ocps-jobs`` command: run the embedded server, or drive a job manager as a client."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import socket
import sys
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .client import ClientError, InvalidArgumentError, OCPSClient, WaitTimeoutError
from .conventions import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from .errors import OCPSError, SettingsError
from .models import JOB_PARAMETERS, JobParameter, ParameterKind
from .observability.logs import configure_logging, flush_logging
from .resultids import decode_result_id

__all__ = ["main"]

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_SERVICE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:8080"
# The embedded server's GIL switch interval (see _serve).
SWITCH_INTERVAL_SECONDS = 0.02

log = logging.getLogger("ocps_jobs.serve")


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return seconds


def _page_size(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_PAGE_SIZE):
        raise argparse.ArgumentTypeError(f"must be a number of jobs from 1 to {MAX_PAGE_SIZE}")
    return int(text)


def _destination(parameter: JobParameter) -> str:
    """Where argparse keeps a job parameter (``job_`` first: ``--url`` is the service's)."""
    return f"job_{parameter.name}"


def _add_parameter(submit: argparse.ArgumentParser, parameter: JobParameter) -> None:
    """The ``submit`` argument of one job parameter, as ``JOB_PARAMETERS`` spells it."""
    help_text = (parameter.description or f"default {parameter.default}").replace("%", "%%")
    if not parameter.cli.startswith("-"):
        submit.add_argument(_destination(parameter), metavar=parameter.cli, help=help_text)
    elif parameter.kind is ParameterKind.ENVIRONMENT:
        submit.add_argument(
            parameter.cli,
            dest=_destination(parameter),
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=help_text + " (repeatable)",
        )
    else:
        submit.add_argument(
            parameter.cli,
            dest=_destination(parameter),
            type=int if parameter.kind is ParameterKind.INTEGER else str,
            metavar=parameter.name.upper(),
            help=help_text,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocps-jobs", description="OCPS job manager: server and client."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run all three functions in one process")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data-dir", type=Path, help="state and local object store")
    serve.add_argument("--backend", choices=["local", "kubernetes"])
    serve.add_argument("--namespace", help="Kubernetes namespace of the Jobs")
    serve.add_argument("--kubeconfig", type=Path)
    serve.add_argument("--s3-endpoint", help="S3 endpoint URL (default: local folder)")
    serve.add_argument("--bucket")
    serve.add_argument("--max-concurrent-jobs", type=int)
    # A blocking UWS WAIT holds a worker thread for up to wait_max_seconds: enough threads
    # that hundreds of waiters leave room for every other request.
    serve.add_argument("--threads", type=int, default=256, help="HTTP worker threads")

    commands.add_parser(
        "sweep",
        help="remove jobs past their destruction time (server side; settings from OCPS_*)",
    )

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--url",
            default=os.environ.get("OCPS_JOBS_URL", DEFAULT_URL),
            help="base URL of the job manager (env OCPS_JOBS_URL)",
        )
        command.add_argument("--token", default=os.environ.get("OCPS_JOBS_TOKEN"))
        command.add_argument("--json", action="store_true", help="machine-readable output")
        return command

    submit = client_command("submit", "create a job")
    for parameter in JOB_PARAMETERS:
        _add_parameter(submit, parameter)
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until it finishes, telling each phase change on stderr",
    )

    listing = client_command("list", "list jobs (all, oldest first; a page with --limit)")
    listing.add_argument("--phase")
    listing.add_argument(
        "--limit", type=_page_size, help="one page of at most N jobs, newest first"
    )
    listing.add_argument("--cursor", help="the page after the one that printed this cursor")

    status = client_command("status", "show one job")
    status.add_argument("job_id")

    wait = client_command("wait", "wait until a job finishes (exit 1 unless completed)")
    wait.add_argument("job_id")
    wait.add_argument("--timeout", type=_positive_seconds)
    wait.add_argument("--poll", type=_positive_seconds, default=0.5)

    logs = client_command("logs", "show a job's log (its replicas' lines marked [index])")
    logs.add_argument("job_id")
    logs.add_argument(
        "--follow", "-f", action="store_true", help="keep showing new lines until the job ends"
    )
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines (per replica)")

    results = client_command("results", "list a job's result files")
    results.add_argument("job_id")

    download = client_command("download", "download a job's results, or one result by ID")
    download.add_argument("target", metavar="JOB_ID|RESULT_ID")
    download.add_argument("--output", "-o", type=Path, default=Path("."))

    abort = client_command("abort", "stop and remove a job")
    abort.add_argument("job_id")
    return parser


def _version() -> str:
    try:
        return version("ocps-jobs")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free one), for waitress to listen on."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    bound = socket.socket(family, kind, proto)
    try:
        bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        bound.bind(address)
    except OSError:
        bound.close()
        raise
    return bound


def _serve(args: argparse.Namespace) -> int:
    from .composition import build_service
    from .config import Settings
    from .http import create_embedded_app
    from .http.server import ServerLimits, create_guarded_server

    settings = Settings.from_env(
        data_dir=args.data_dir,
        backend=args.backend,
        namespace=args.namespace,
        kubeconfig=args.kubeconfig,
        s3_endpoint=args.s3_endpoint,
        bucket=args.bucket,
        max_concurrent_jobs=args.max_concurrent_jobs,
    )
    # One client (or every WAIT) may hold all threads but a reserve for everyone else.
    client_share = args.threads - max(1, args.threads // 8)
    if settings.max_concurrent_waits is None:
        settings = settings.model_copy(update={"max_concurrent_waits": client_share})
    elif settings.max_concurrent_waits >= args.threads:
        print(
            f"ocps-jobs: OCPS_MAX_CONCURRENT_WAITS ({settings.max_concurrent_waits}) must be "
            f"below --threads ({args.threads}): blocked WAITs would hold every thread",
            file=sys.stderr,
        )
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    # The port first: a server that cannot listen must not start the data dir's jobs.
    try:
        listening = _bound_socket(args.host, args.port)
    except OSError as error:
        print(f"ocps-jobs: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return EXIT_SERVICE
    service = build_service(settings)
    app = create_embedded_app(service)
    # Every waiter holds a connection too; poll() has no FD_SETSIZE ceiling.
    connection_limit = max(100, 2 * args.threads)
    limits = ServerLimits(
        threads=args.threads,
        connection_limit=connection_limit,
        connections_per_client=settings.http_connections_per_client
        or connection_limit - connection_limit // 8,
        requests_per_client=client_share,
        header_timeout_seconds=settings.http_header_timeout_seconds,
        send_timeout_seconds=settings.http_send_timeout_seconds,
        idle_timeout_seconds=settings.http_idle_timeout_seconds,
    )
    server = create_guarded_server(
        app,
        listening,
        limits,
        asyncore_use_poll=True,
        # Downloads stream through each connection's send queue (http/sendqueue.py), in
        # memory: the app thread waits once 4 MiB are queued for a client, so memory per
        # download stays bounded, whatever the file's size.
        outbuf_high_watermark=4 * 1024 * 1024,
        ident="ocps-jobs",
        # Bodies up to 4x the API limit reach the app (which answers a JSON 413); larger
        # declared bodies are refused by waitress at once instead of being spooled to disk.
        max_request_body_size=4 * settings.max_body_bytes,
    )

    def stop(*_: object) -> None:
        server.close()
        # waitress's loop runs while any connection is open (an idle keep-alive one too):
        # SystemExit is how it stops regardless (run() catches it and ends its threads).
        raise SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # When one job changes, every UWS WAIT on it wakes at once: hundreds of threads wanting
    # the GIL for a millisecond or two each. Forced switches at Python's default interval
    # made them preempt one another and the server's I/O loop; at a longer one each
    # finishes its answer in one go (bench wait_fanout_local; figures in bench/README.md).
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    assert server.socket is not None
    host, port = server.socket.getsockname()[:2]
    where = settings.s3_endpoint or settings.data_dir
    print(f"ocps-jobs serving on http://{host}:{port} ({settings.backend} backend, store {where})")
    print(f"  API: http://{host}:{port}/api/v1/job", flush=True)
    log.info("serving", extra={"url": f"http://{host}:{port}", "backend": settings.backend})
    try:
        server.run()
    except (OSError, ValueError):  # the socket map closes under run() on shutdown
        pass
    finally:
        service.close()
        log.info("stopped")
    return EXIT_OK


def _sweep() -> int:
    from .composition import build_service
    from .config import Settings

    settings = Settings.from_env()
    if settings.backend == "local":
        # Building a local backend would run the data dir's queued jobs, then stop them.
        print(
            "ocps-jobs: sweep is for the Kubernetes backend; the embedded server removes "
            "expired jobs itself",
            file=sys.stderr,
        )
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    service = build_service(settings)
    try:
        destroyed = service.destroy_expired()
    finally:
        service.close()
    flush_logging()  # the result document is the last line of stdout
    print(json.dumps({"destroyed": destroyed}))
    return EXIT_OK


def _emit(args: argparse.Namespace, data: Any, table: Any = None) -> None:
    if args.json or table is None:
        print(json.dumps(data, indent=2))
        return
    from rich.console import Console

    # Piped output keeps whole rows: ids must stay copyable.
    Console(width=None if sys.stdout.isatty() else 240).print(table)


def _jobs_table(jobs: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table()
    table.add_column("job id", no_wrap=True)
    table.add_column("run id", overflow="fold")
    table.add_column("phase", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("ended", no_wrap=True)
    table.add_column("error", overflow="fold")
    for job in jobs:
        table.add_row(
            *_plain(
                job["jobId"],
                job["runId"],
                job["phase"],
                job["creationTime"] or "",
                job["endTime"] or "",
                (job["errorSummary"]["message"] or "")[:60],
            )
        )
    return table


def _plain(*values: object) -> list[Any]:
    """Cells shown as they are: rich markup (``[/x]``, ``[link=…]``) and controls inert."""
    from rich.text import Text

    return [Text("".join(c if c.isprintable() else "\ufffd" for c in str(v))) for v in values]


def _results_table(results: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table()
    table.add_column("result id", overflow="fold")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("uri", overflow="fold")
    for item in results:
        table.add_row(*_plain(item["id"], item["size"], item["mimeType"], item["uri"]))
    return table


def _parse_seed_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _duration(job: dict[str, Any]) -> str:
    """How long the job ran: start to end, or to now while it runs."""
    start = _parse_seed_time(job.get("startTime"))
    if start is None:
        return ""
    end = _parse_seed_time(job.get("endTime")) or datetime.now(start.tzinfo)
    seconds = max(int((end - start).total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d} ({seconds} s)"


def _status_text(job: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Everything a person triaging one job asks for, none of it cut short."""
    parameters = job.get("parameters") or {}
    info = job.get("jobInfo") or {}
    command = parameters.get("command") or []
    rows = [
        ("job id", job["jobId"]),
        ("run id", job["runId"]),
        ("owner", job["ownerId"]),
        ("phase", job["phase"]),
        ("created", job["creationTime"]),
        ("started", job["startTime"]),
        ("ended", job["endTime"]),
        ("duration", _duration(job)),
        ("time limit", f"{job['executionDuration']} s" if job["executionDuration"] else ""),
        ("destruction", job["destruction"]),
        ("command", command[-1] if command else ""),
        ("git url", parameters.get("url")),
        ("commit ref", parameters.get("commit_ref")),
        ("commit", info.get("commitSha")),
        ("image", info.get("imageDigest")),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows if value]
    message = (job.get("errorSummary") or {}).get("message") or ""
    if message:
        lines.append("error:")
        lines.extend(f"  {line}" for line in message.splitlines())
    if results:
        lines.append(f"results ({len(results)}):")
        for item in results:
            relative = decode_result_id(item["id"]).relative_path
            lines.append(f"  {item['size']:>12}  {relative}  {item['id']}")
    return "\n".join(lines)


def _advance(progress: Any, task: Any, done: int, total: int) -> None:
    progress.update(task, completed=done, total=total or None)


def _download(client: OCPSClient, args: argparse.Namespace) -> list[str]:
    from rich.markup import escape as markup_escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    if len(args.target) == 32 and all(c in "0123456789abcdef" for c in args.target):
        items = client.results(args.target)
        targets = [(item["id"], args.output / args.target, item) for item in items]
    else:
        job_id = decode_result_id(args.target).job_id
        listed = {item["id"]: item for item in client.results(job_id)}
        # The service finds a result by any spelling of its ID; the listing has one.
        wanted = decode_result_id(args.target).key
        same = [item for item in listed.values() if decode_result_id(item["id"]).key == wanted]
        targets = [(args.target, args.output, same[0] if same else {})]
    written = []
    columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, disable=args.json or not sys.stderr.isatty()) as progress:
        for result_id, folder, item in targets:
            relative = decode_result_id(result_id).relative_path
            task = progress.add_task(markup_escape(relative), total=None)
            path = client.download(
                result_id,
                folder / relative,
                on_progress=functools.partial(_advance, progress, task),
                sha256=item.get("sha256") or "",
            )
            written.append(str(path))
    return written


def _submission(
    args: argparse.Namespace,
) -> tuple[str, list[tuple[str, str]], dict[str, str | int | None]]:
    """``submit``'s command, environment and other job parameters, as ``client.submit`` takes."""
    command, environment, parameters = "", [], {}
    for parameter in JOB_PARAMETERS:
        value = getattr(args, _destination(parameter))
        if parameter.required:
            command = value
        elif parameter.kind is ParameterKind.ENVIRONMENT:
            for entry in value:
                name, separator, text = entry.partition("=")
                if not separator:
                    raise InvalidArgumentError(f"{parameter.cli} expects NAME=VALUE, got {entry!r}")
                environment.append((name, text))
        else:
            parameters[parameter.name] = value
    return command, environment, parameters


def _tell_phase(phase: str) -> None:
    """One line on stderr per phase change of a job being waited on."""
    print(f"{datetime.now().astimezone():%H:%M:%S} {phase}", file=sys.stderr, flush=True)


def _run_client(args: argparse.Namespace) -> int:
    with OCPSClient(args.url, token=args.token) as client:
        if args.command == "submit":
            command, environment, parameters = _submission(args)
            job = client.submit(command, environment=environment, **parameters)
            if args.wait:
                print(f"submitted job {job['jobId']}", file=sys.stderr, flush=True)
                job = client.wait(job["jobId"], on_phase=_tell_phase)
            _emit(args, job, _jobs_table([job]))
            return EXIT_OK if not args.wait or job["phase"] == "completed" else EXIT_JOB_FAILED
        if args.command == "list":
            if args.limit is None and args.cursor is None:
                jobs = client.list_jobs(args.phase)
            else:
                jobs, following = client.list_page(
                    args.phase, args.limit or DEFAULT_PAGE_SIZE, args.cursor
                )
                if following is not None:
                    print(f"more jobs: ocps-jobs list --cursor {following}", file=sys.stderr)
            _emit(args, jobs, _jobs_table(jobs))
        elif args.command == "status":
            job = client.get(args.job_id)
            if args.json:
                _emit(args, job)
            else:
                print(_status_text(job, client.results(args.job_id)))
        elif args.command == "logs":
            for line in client.logs(args.job_id, tail=args.tail, follow=args.follow):
                print(line, flush=args.follow)
        elif args.command == "wait":
            job = client.wait(args.job_id, poll_seconds=args.poll, timeout=args.timeout)
            _emit(args, job, _jobs_table([job]))
            return EXIT_OK if job["phase"] == "completed" else EXIT_JOB_FAILED
        elif args.command == "results":
            items = client.results(args.job_id)
            _emit(args, items, _results_table(items))
        elif args.command == "download":
            _emit(args, _download(client, args))
        elif args.command == "abort":
            _emit(args, client.abort(args.job_id))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ocps-jobs``."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "sweep":
            return _sweep()
        return _run_client(args)
    except WaitTimeoutError as error:  # the job did not complete in time
        print(f"ocps-jobs: {error}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except (SettingsError, InvalidArgumentError) as error:
        print(f"ocps-jobs: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ClientError, OCPSError) as error:
        print(f"ocps-jobs: {error}", file=sys.stderr)
        return EXIT_SERVICE


if __name__ == "__main__":
    sys.exit(main())
