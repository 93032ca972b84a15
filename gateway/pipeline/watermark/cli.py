"""`gateway watermark detect [FILE|-]`, `gateway watermark verify` and `... key-id SUB...`.

All read the watermark secret the server uses (GATEWAY_SECRET_WATERMARK, else
<home>/secrets/watermark; key-id the audit secret too) and never create one; detect also
opens the ledger
(<home>/ledger.sqlite3) when it exists. Output is JSON on stdout; errors are one line
on stderr. Exit statuses are in each command's --help (VERIFY_EXIT, DETECT_EXIT).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.postgres import is_postgres_url

SECRET_NAME = "watermark"
LEDGER_FILE = "ledger.sqlite3"
USAGE = 2
NOT_CHECKED = 3  # verify: the signature is genuine, but the text could not be checked
DETECT_EXIT = ("exit status: 0 the report was printed (whatever it found); 1 no watermark "
               "secret; 2 the input or the ledger cannot be read, or a bad argument")
VERIFY_EXIT = ("exit status: 0 valid (the signature, and the text if given); 1 not valid "
               "(bad signature, or the text does not match the signed hash); 2 usage error "
               f"(a bad argument, an unreadable --text-file); {NOT_CHECKED} the signature is "
               "valid but the header has no content hash (a streamed response), so the "
               "given text was not checked: the JSON says \"valid\": false, "
               "\"signature\": \"valid\", \"content\": \"not_checked\"")


def add_watermark_parsers(sub: Any) -> None:
    """Register `watermark detect` and `watermark verify` on the CLI's subparsers."""
    p = sub.add_parser("watermark", help="trace text back to the key that produced it")
    cmds = p.add_subparsers(dest="watermark_command", required=True)
    detect = cmds.add_parser("detect", help="embedded payloads and ledger matches, as JSON",
                             description="Report every payload in a text (who, when, which "
                             "request; signature valid? backed by the ledger?) and the "
                             "ledger's matches, as JSON. A payload attributes the text only "
                             "when the ledger holds its request and the text matches that "
                             "request's output (result \"payload_unconfirmed\" otherwise; "
                             "without a ledger, \"corroborated\": false).",
                             epilog=DETECT_EXIT)
    detect.add_argument("file", nargs="?", default="-", help="UTF-8 text file, or - for stdin")
    detect.add_argument("--limit", type=_positive, default=5,
                        help="ledger matches to show (at least 1; default 5)")
    _common(detect)
    detect.add_argument("--ledger", help="ledger: a SQLite file or a postgresql:// URL "
                        f"(default GATEWAY_LEDGER_URL, else HOME/{LEDGER_FILE})")
    detect.add_argument("--no-ledger", action="store_true", help="payloads only")
    verify = cmds.add_parser(
        "verify", help="check an x-gateway-provenance header value",
        description="Check an x-gateway-provenance header's signature and, given the "
        "response's text, its content hash (non-streamed responses only). With several "
        "choices (n>1) give each choice's text, in the order of the response's choices: "
        "the hash covers all of them. A choice with no text (only tool calls, or a "
        "blocked one) is --text ''. --text and --text-file may be mixed; their order on "
        "the command line is the choices' order. A streamed response's header has no "
        "content hash: it verifies alone, but not with a text.", epilog=VERIFY_EXIT)
    verify.add_argument("--header", help="the header value (default: read from stdin)")
    verify.add_argument("--text", dest="texts", action="append", metavar="TEXT",
                        help="a choice's text exactly as delivered, marks included; "
                        "repeat once per choice (--text=TEXT when it starts with -)")
    verify.add_argument("--text-file", dest="texts", action="append", type=_TextFile,
                        metavar="FILE", help="like --text, read from FILE (- for stdin) "
                        "byte for byte: a text ending in a newline survives")
    _common(verify)
    key_ids = cmds.add_parser(
        "key-id", help="the key ids of subjects, to name the key detect reports",
        description="Key ids are keyed hashes of the JWT subject: nothing turns one back "
        "into a subject, but this gives each subject's, one JSON line per subject "
        "({\"sub\", \"key_id\" (watermark and ledger), \"audit_key_id\"}), so a list "
        "of subjects (from the identity provider) can be searched for the one detect named. "
        "Run it with the gateway's GATEWAY_HOME or GATEWAY_SECRET_* environment: another "
        "secret gives other ids.", epilog="exit status: 0 printed; 1 no watermark or "
        "audit secret; 2 stdin cannot be read")
    key_ids.add_argument("subjects", nargs="+", metavar="SUB",
                         help="a JWT subject, or - to read one per line from stdin")
    _common(key_ids)
    p.set_defaults(handler=run_watermark)


class _TextFile:
    """A --text-file argument, told apart from a literal --text in the shared list."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class _UsageError(Exception):
    pass


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", type=Path, help="GATEWAY_HOME (default: from the settings)")


def _home(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    from gateway.settings import load_settings

    return load_settings(overrides={}).home


def _secret(home: Path, name: str = SECRET_NAME) -> bytes:
    """The gateway's secret `name`; never created here (a new one would match nothing)."""
    from gateway.secret_store import load_secret

    if not os.environ.get(f"GATEWAY_SECRET_{name.upper()}") and not (
            home / "secrets" / name).exists():
        raise SystemExit(f"gateway watermark: no {name} secret under {home} "
                         f"(set GATEWAY_HOME or GATEWAY_SECRET_{name.upper()})")
    return load_secret(home, name)


def _read(source: str) -> str:
    """The UTF-8 text of a file or stdin (-); a _UsageError says why not, in one line."""
    name = "stdin" if source == "-" else source
    stdin = getattr(sys.stdin, "buffer", None) if source == "-" else None
    try:
        if source == "-" and stdin is None:
            return sys.stdin.read()  # already text (a caller replaced sys.stdin)
        raw = stdin.read() if stdin is not None else Path(source).read_bytes()
        return raw.decode("utf-8")
    except OSError as exc:
        raise _UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise _UsageError(f"{name} is not UTF-8 text") from None


def _print(data: dict[str, Any]) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def run_watermark(args: argparse.Namespace) -> int:
    if args.watermark_command == "detect":
        return _run_detect(args)
    if args.watermark_command == "key-id":
        return _run_key_ids(args)
    return _run_verify(args)


def _run_key_ids(args: argparse.Namespace) -> int:
    from gateway.audit.record import AuditKeys
    from gateway.pipeline.watermark.payload import key_id

    home = _home(args.home)
    secret = _secret(home)
    audit = AuditKeys(_secret(home, "audit"))
    subjects: list[str] = []
    for sub in args.subjects:
        if sub != "-":
            subjects.append(sub)
            continue
        try:
            subjects.extend(line.strip() for line in _read("-").splitlines() if line.strip())
        except _UsageError as exc:
            print(f"gateway watermark key-id: {exc}", file=sys.stderr)
            return USAGE
    for sub in subjects:
        print(orjson.dumps({"sub": sub, "key_id": key_id(secret, sub),
                            "audit_key_id": audit.key_id(sub)}).decode())
    return 0


def _run_detect(args: argparse.Namespace) -> int:
    from gateway.pipeline.watermark.detect import detect
    from gateway.pipeline.watermark.ledger import Ledger

    home = _home(args.home)
    secret = _secret(home)
    try:
        text = _read(args.file)
    except _UsageError as exc:
        print(f"gateway watermark detect: {exc}", file=sys.stderr)
        return USAGE
    where = args.ledger or os.environ.get("GATEWAY_LEDGER_URL") or home / LEDGER_FILE
    if isinstance(where, str) and not is_postgres_url(where):
        where = Path(where)
    if args.ledger and not args.no_ledger and isinstance(where, Path) and not where.exists():
        # Only the default ledger may be absent (payloads only then): a named one is a typo.
        print(f"gateway watermark detect: no ledger at {where}", file=sys.stderr)
        return USAGE
    ledger = None
    if not args.no_ledger and (isinstance(where, str) or where.exists()):
        ledger = Ledger.at(where)
        try:
            ledger.open()
        except (sqlite3.Error, OSError) as exc:
            ledger.store.close()
            print(f"gateway watermark detect: cannot open the ledger {where}: {exc}",
                  file=sys.stderr)
            return USAGE
    try:
        _print(detect(text, secret, ledger, limit=args.limit))
    finally:
        if ledger is not None:
            ledger.store.close()
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from gateway.pipeline.watermark.provenance import verify_provenance

    try:
        texts = _texts(args.texts, header_on_stdin=args.header is None)
    except _UsageError as exc:
        print(f"gateway watermark verify: {exc}", file=sys.stderr)
        return 2
    secret = _secret(_home(args.home))
    value = args.header if args.header is not None else sys.stdin.read()
    value = value.strip()
    if value.lower().startswith("x-gateway-provenance:"):
        value = value.split(":", 1)[1].strip()
    result = verify_provenance(value, secret, texts)
    _print(result.as_json())
    if result.valid:
        return 0
    if result.signature == "valid" and result.content == "not_checked":
        print("gateway watermark verify: the signature is valid, but the header has no "
              "content hash (a streamed response): the text was not checked",
              file=sys.stderr)
        return NOT_CHECKED
    return 1


def _texts(items: list[str | _TextFile] | None, header_on_stdin: bool) -> list[str] | None:
    """The choices' texts in order; files are read as bytes so no newline is rewritten."""
    if items is None:
        return None
    stdin = [item for item in items if isinstance(item, _TextFile) and item.path == "-"]
    if stdin and header_on_stdin:
        raise _UsageError("stdin cannot hold both the header and a text: pass --header")
    if len(stdin) > 1:
        raise _UsageError("--text-file - can be given once")
    texts = []
    for item in items:
        if not isinstance(item, _TextFile):
            texts.append(item)
            continue
        try:
            raw = (sys.stdin.buffer.read() if item.path == "-"
                   else Path(item.path).read_bytes())
            texts.append(raw.decode("utf-8"))
        except OSError as exc:
            raise _UsageError(f"cannot read --text-file {item.path}: "
                              f"{exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise _UsageError(f"--text-file {item.path} is not UTF-8 text") from None
    return texts
