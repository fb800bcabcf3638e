"""Where image bytes live, and the one opener that reads them back from a uri (decoder and grid alike).

    fs, path = filesystem("s3://bkt/photos/")            # fsspec: s3fs, gcsfs, ... with short timeouts
    data = open_image_bytes("tar:s3://bkt/shards/00000.tar#000123.jpg")
    data = open_image_bytes("parquet:/data/part-0.parquet#row=17&column=jpg")
    with Image.open(image_source(uri)) as img: ...     # a local path as is; anything else as BytesIO

A uri is one of:

  /abs/path/a.jpg                          a local file (exactly what list_images always gave)
  s3://bkt/prefix/a.jpg                    an object, read through fsspec (any protocol fsspec knows)
  tar:<container>#<member>                 a member of a tar shard; <container> is a local path or URL
  parquet:<container>#row=<n>&column=<c>   row n (0-based, in the file) of column c of a Parquet file

In <container>, '%' and '#' are written %25 and %23, so the first '#' ends it; the member name and the
column are %-quoted (urllib.parse.quote) in the part after it.

Credentials and endpoints are those of each store's own library: for S3, botocore's environment and config
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_ENDPOINT_URL,
AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, ~/.aws/config). Set here: short connection timeouts, botocore's
"standard" retries (pipeline.retry says which layer retries what), s3fs's own retry loop off, and a count
of botocore's retries (pipeline.retry.RETRIES). Reads take a RetryPolicy where they are whole operations
(`read_bytes`, `open_image_bytes`); a store that stays unreachable fails with SourceUnreachableError in the
driver's listing, and with TransientError elsewhere.
"""

from __future__ import annotations

import bisect
import io
import re
import tarfile
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from actindex.pipeline.errors import InvalidInputError, MissingInputError, SourceUnreachableError
from actindex.pipeline.retry import BOTOCORE_ATTEMPTS, RETRIES, RetryPolicy, TransientError, is_transient

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# botocore: fail a connection within seconds; retry 5xx, 429, throttling and connection errors in place
# ("standard" mode: exponential backoff with full jitter), BOTOCORE_ATTEMPTS attempts per API call
S3_OPTIONS = {
    "config_kwargs": {
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"mode": "standard", "total_max_attempts": BOTOCORE_ATTEMPTS},
    }
}
S3FS_ATTEMPTS = 1  # s3fs's own retry loop (5 attempts by default) would multiply botocore's and ours
_CONNECTION_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}


def is_url(location: str) -> bool:
    return bool(_URL.match(location))


def filesystem(url: str, **options):
    """(fsspec filesystem, path inside it) for a URL such as s3://bkt/prefix/. Listings are never cached:
    a process that runs several jobs (a notebook, the tests) must see objects added or removed since."""
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    s3 = protocol in ("s3", "s3a")
    options = {"use_listings_cache": False, **(S3_OPTIONS if s3 else {}), **options}
    if s3:
        options.setdefault("session", _s3_session())
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise InvalidInputError(
            f"reading {protocol}:// needs its fsspec backend: {exc} (pip install 'actindex[s3]' for s3://)"
        ) from None
    if s3:
        fs.retries = S3FS_ATTEMPTS
    return fs, path


_SESSION_LOCK = threading.Lock()
_SESSION = None


def _s3_session():
    """The aiobotocore session every s3fs filesystem of this process makes its clients from (one per
    process, so that fsspec's instance cache still finds them): its clients count botocore's retries."""
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            from aiobotocore.session import AioSession

            _SESSION = AioSession()
            _SESSION.register("after-call.s3", _count_retries)
            _SESSION.register("after-call-error.s3", _count_failed_retries)
    return _SESSION


def _count_retries(parsed=None, **kwargs) -> None:
    """botocore's retries of a call that got an answer (ResponseMetadata.RetryAttempts)."""
    if isinstance(parsed, dict):
        RETRIES.add(parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0))


def _count_failed_retries(exception=None, **kwargs) -> None:
    """botocore gives up on a transient error (a connection error) only after all its attempts."""
    if exception is not None and is_transient(exception):
        RETRIES.add(BOTOCORE_ATTEMPTS - 1)


def join(location: str, relpath: str) -> str:
    return f"{location.rstrip('/')}/{relpath}"


def parent(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[0]


@contextmanager
def user_errors(source: str) -> Iterator[None]:
    """Turn what a store raises while listing `source` into a one-line UserError: unreachable endpoint,
    missing credentials, missing bucket."""
    try:
        yield
    except Exception as exc:
        cause = exc.cause if isinstance(exc, TransientError) else exc
        names = {cls.__name__ for cls in type(cause).__mro__}
        retried = f" (still failing after {exc.seconds:.0f} s of retries)" if cause is not exc else ""
        if names & _CONNECTION_ERRORS or isinstance(cause, (ConnectionError, TimeoutError)):
            raise SourceUnreachableError(
                f"cannot reach the store of {source!r}: {_one_line(cause)}{retried} "
                "(check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and the network)"
            ) from None
        if isinstance(exc, TransientError):
            raise SourceUnreachableError(
                f"the store of {source!r} keeps failing: {_one_line(cause)}{retried}; "
                "rerun the same command when it answers"
            ) from None
        if "NoCredentialsError" in names:
            raise InvalidInputError(
                f"no credentials to read {source!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE"
            ) from None
        if isinstance(exc, FileNotFoundError) and is_url(source):
            raise MissingInputError(f"{source!r}: {_one_line(exc)}") from None
        raise


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ------------------------------------------------------------------------------------------------ uris


def _quote_container(location: str) -> str:
    return location.replace("%", "%25").replace("#", "%23")


def tar_uri(container: str, member: str) -> str:
    return f"tar:{_quote_container(container)}#{urllib.parse.quote(member, safe='/')}"


def parquet_uri(container: str, row: int, column: str) -> str:
    return f"parquet:{_quote_container(container)}#row={row}&column={urllib.parse.quote(column, safe='')}"


def split_uri(uri: str) -> tuple[str, str, str]:
    """(kind, container, rest): kind "tar", "parquet", "url" or "file"; rest unquoted ('' for plain)."""
    for kind in ("tar", "parquet"):
        if uri.startswith(kind + ":") and "#" in uri:
            container, rest = uri[len(kind) + 1 :].split("#", 1)
            return kind, urllib.parse.unquote(container), rest
    return ("url" if is_url(uri) else "file"), uri, ""


# ----------------------------------------------------------------------------------------------- reads


def read_bytes(
    location: str, start: int | None = None, end: int | None = None, retry: RetryPolicy | None = None
) -> bytes:
    """Bytes [start, end) of a local file or an object (all of it by default); with `retry`, transient
    failures are retried (pipeline.retry)."""
    if retry is not None:
        return retry.call(read_bytes, location, start, end, what=location)
    if is_url(location):
        fs, path = filesystem(location)
        return fs.cat_file(path, start=start, end=end)
    with open(location, "rb") as f:
        if start:
            f.seek(start)
        return f.read() if end is None else f.read(end - (start or 0))


def open_binary(location: str):
    """A seekable binary file object for a local path or a URL."""
    if is_url(location):
        fs, path = filesystem(location)
        return fs.open(path, "rb")
    return open(location, "rb")


def open_image_bytes(uri: str, retry: RetryPolicy | None = None) -> bytes:
    """The encoded image a uri names (see the module docstring). Raises FileNotFoundError when it is
    gone, EOFError when a tar ends inside it, NullImageError when a Parquet value is null; with `retry`,
    transient failures (of the object, or of the tar's or Parquet file's ranged reads) are retried, and
    TransientError is raised when they outlast it."""
    if retry is not None:
        return retry.call(open_image_bytes, uri, what=uri)
    kind, container, rest = split_uri(uri)
    if kind == "tar":
        return _TARS.read_member(container, urllib.parse.unquote(rest))
    if kind == "parquet":
        fields = urllib.parse.parse_qs(rest)
        return _PARQUETS.read_value(container, fields["column"][0], int(fields["row"][0]))
    return read_bytes(uri)


def image_source(uri: str, retry: RetryPolicy | None = None):
    """What Image.open takes for `uri`: a local file's path, otherwise its bytes as a BytesIO."""
    return uri if split_uri(uri)[0] == "file" else io.BytesIO(open_image_bytes(uri, retry))


class NullImageError(ValueError):
    """A Parquet row whose image value is null."""


class _Cache:
    """A small thread-safe LRU of per-container state (tar member tables, Parquet row groups): a worker
    decodes a shard's images in order, so consecutive reads hit the same container."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, build: Callable):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = build()  # outside the lock: other threads keep reading other containers
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


class _TarReader:
    def __init__(self):
        self.members = _Cache(16)

    def read_member(self, container: str, member: str) -> bytes:
        table = self.members.get(container, lambda: _member_table(container))
        if member not in table:
            raise FileNotFoundError(f"no member {member!r} in {container}")
        offset, size = table[member]
        data = read_bytes(container, offset, offset + size)
        if len(data) < size:
            raise EOFError(f"tar member truncated: {len(data)} of {size} bytes (the tar ends early)")
        return data


def _member_table(container: str) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size), from the tar's headers (no member data is read)."""
    table = {}
    with open_binary(container) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        try:
            for m in tar:
                if m.isfile():
                    table[m.name] = (m.offset_data, m.size)
        except tarfile.ReadError as exc:  # the last member's data is cut short: read_member says so
            if "unexpected end of data" not in str(exc):
                raise
    return table


class _ParquetReader:
    def __init__(self):
        self.files = _Cache(16)  # container -> the first row of each row group
        self.groups = _Cache(2)  # (container, column, row group) -> values: one img2dataset group is ~GBs

    def read_value(self, container: str, column: str, row: int) -> bytes:
        starts = self.files.get(container, lambda: _row_group_starts(container))
        group = bisect.bisect_right(starts, row) - 1
        values = self.groups.get((container, column, group), lambda: _read_group(container, column, group))
        if row - starts[group] >= len(values):
            raise FileNotFoundError(f"no row {row} in {container}")
        value = values[row - starts[group]]
        if value is None:
            raise NullImageError(f"no bytes: null in column {column!r} (row {row})")
        return value


def _row_group_starts(container: str) -> list[int]:
    import pyarrow.parquet as pq

    with open_binary(container) as f:
        meta = pq.ParquetFile(f).metadata
    starts, total = [], 0
    for i in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(i).num_rows
    return starts


def _read_group(container: str, column: str, group: int) -> list:
    import pyarrow.parquet as pq

    with open_binary(container) as f:
        values = pq.ParquetFile(f).read_row_group(group, columns=[column]).column(column)
    return [image_bytes(value) for value in values.to_pylist()]


def image_bytes(value) -> bytes | None:
    """The encoded image in a Parquet value: binary as is, or a Hugging Face {"bytes", "path"} struct."""
    return value.get("bytes") if isinstance(value, dict) else value


_TARS = _TarReader()
_PARQUETS = _ParquetReader()
