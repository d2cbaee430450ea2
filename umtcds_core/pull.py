"""``umtcds models pull NAME --to DIR [--source hf|modelscope]``: put a real chat model (GLM-4-9B-chat-hf, Qwen…) on
this machine, checked, so ``--model DIR`` works everywhere else.

Usage::

    umtcds models pull THUDM/glm-4-9b-chat-hf --to models/glm-4-9b-chat-hf
    HF_ENDPOINT=https://hf-mirror.com umtcds models pull THUDM/glm-4-9b-chat-hf --to models/glm-4-9b-chat-hf
    umtcds models pull ZhipuAI/glm-4-9b-chat-hf --to models/glm-4-9b-chat-hf --source modelscope   # AutoDL, China

Why a command of our own around the hubs' libraries: the libraries download well, but a campus user on a rented GPU
box needs the rest said plainly — offline, a misspelt name, a full disk or a folder they may not write each end in
one sentence (no traceback); the files are checked against what the hub reports after the download; and the folder
is checked to be a model before the next step finds out the hard way.

How, per source:

* ``hf`` — ``huggingface_hub`` (``HfApi`` for the listing, ``snapshot_download`` into ``--to``). ``HF_ENDPOINT``
  (e.g. ``https://hf-mirror.com``) or ``--endpoint`` picks a mirror; ``HF_TOKEN`` a gated model's access. Resuming:
  files already complete are skipped on a re-run; a connection dropped mid-file is resumed with an HTTP Range request
  within the run. A file half-written when the process itself was killed starts again from zero (huggingface_hub 2.x
  downloads to a per-process temporary file and removes it on failure), so a killed pull loses at most the files in
  flight (one ~5 GB shard of GLM-4-9B each).
* ``modelscope`` — ``modelscope-hub``, the client the ``modelscope`` package itself delegates to (``HubApi`` lists and
  ``download_repo``s into ``--to``; importing it costs a fraction of ``import modelscope``); ``MODELSCOPE_ENDPOINT`` or
  ``--endpoint`` picks the address. It keeps ``*.incomplete`` files and resumes them with Range requests across runs
  too, and checks each file's sha256 itself when the hub lists one.

Then, for both: every listed file must be on disk with the listed size; with ``--verify`` (default) its sha256 (LFS
files) or git blob id (small files, Hugging Face) must match. A damaged file is removed so that running the same
command again fetches it anew. Progress: the bytes in the folder, as a tqdm bar on a terminal, ``progress.json`` for
the dashboard and a plain line every few seconds in a job's log.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import schema as S
from .errors import UserError

setting = S.setting
optional_text = S.optional_text

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
LOG_EVERY_S = 10.0
"""Seconds between plain progress lines when stderr is not a terminal (a job's log)."""


class PullError(UserError, RuntimeError):
    """A download that cannot go on; the sentence says what to do (network, name, disk, permission, damaged file)."""


def _is_repo_id(value) -> bool:
    return isinstance(value, str) and bool(_REPO_ID.match(value.strip()))


def _is_url(value) -> bool:
    return isinstance(value, str) and value.strip().startswith(("http://", "https://"))


# ---- settings: declared once (schema.py); flags, --config YAML and any widget come from here ------------------------
@dataclass
class PullSettings:
    """What ``umtcds models pull`` downloads, from where, to where."""

    name: str | None = optional_text(
        ("模型名称", "Model name"),
        "the hub's model id, owner/name (e.g. THUDM/glm-4-9b-chat-hf; on ModelScope ZhipuAI/glm-4-9b-chat-hf); NAME",
        flag="",
        widget="text",
        valid=_is_repo_id,
        range_msg=(
            "'{value}' is not a hub model id; write it as owner/name, e.g. THUDM/glm-4-9b-chat-hf",
            "“{value}”不是模型编号；请写成 owner/name 的形式，例如 THUDM/glm-4-9b-chat-hf",
        ),
        example="THUDM/glm-4-9b-chat-hf",
    )
    to: str | None = optional_text(
        ("下载到文件夹", "Download to folder"),
        "folder the model's files go to (created if missing); afterwards use it as --model DIR",
        flag="--to",
        widget="text",
        example="models/glm-4-9b-chat-hf",
    )
    source: str = setting(
        "hf",
        ("下载来源", "Source"),
        "hf: Hugging Face (honours HF_ENDPOINT, e.g. https://hf-mirror.com); modelscope: ModelScope (fast in China)",
        choices=("hf", "modelscope"),
        choice_labels={"hf": ("Hugging Face", "Hugging Face"), "modelscope": ("魔搭 ModelScope", "ModelScope")},
        widget="radio",
    )
    revision: str | None = optional_text(
        ("版本", "Revision"),
        "branch, tag or commit to download; null: the hub's default branch",
        widget="text",
        example="main",
    )
    endpoint: str | None = optional_text(
        ("Hub 地址（镜像）", "Hub address (mirror)"),
        "the hub's address, e.g. https://hf-mirror.com; null: HF_ENDPOINT / MODELSCOPE_ENDPOINT, else the official hub",
        widget="text",
        valid=_is_url,
        range_msg=(
            "'{value}' is not an address; write it like https://hf-mirror.com",
            "“{value}”不是网址；请写成 https://hf-mirror.com 这样的形式",
        ),
        example="https://hf-mirror.com",
    )
    workers: int = setting(
        8,
        ("同时下载的文件数", "Files downloaded at once"),
        "files downloaded in parallel; fewer: gentler on a slow or shared line",
        min=1,
        max=64,
    )
    verify: bool = setting(
        True,
        ("下载后校验", "Verify after download"),
        "check each file's sha256 (or git blob id) against the hub's listing; reads every byte once more",
    )


PULL = S.from_dataclass(PullSettings, "models pull", title="UMTCDS model download settings", command="models pull")


# ---- what the hub lists ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None = None
    """The content's sha256 where the hub reports one (LFS files; ModelScope's listing)."""
    git_oid: str | None = None
    """The git blob id (sha1 of ``blob <size>\\0`` + content) of a small Hugging Face file."""


@dataclass
class PullResult:
    name: str
    source: str
    folder: Path
    revision: str
    files: int
    bytes: int
    downloaded: int
    seconds: float
    verified: bool
    warnings: tuple[str, ...] = ()

    def sentence(self) -> str:
        checked = "sizes and checksums checked" if self.verified else "sizes checked"
        return (
            f"Pulled {self.name} ({self.source}, revision {self.revision[:12]}) into {self.folder}: {self.files} files, "
            f"{_gb(self.bytes)}, {_gb(self.downloaded)} downloaded in {self.seconds:.0f} s; {checked}."
        )

    def hint(self) -> str:
        return f"Use it with --model {self.folder} (e.g. `umtcds chat --model {self.folder}`)."


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _host(endpoint: str) -> str:
    return re.sub(r"^https?://", "", endpoint).rstrip("/")


# ---- Hugging Face -----------------------------------------------------------------------------------------------------
def _hf_endpoint(values: dict) -> str:
    return (values.get("endpoint") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hf_error(exc: BaseException, name: str, endpoint: str) -> PullError | None:
    """A huggingface_hub / network exception as one sentence; None when it is none of the known kinds."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    host = _host(endpoint)
    if isinstance(exc, OfflineModeIsEnabled):
        return PullError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it (or set HF_HUB_OFFLINE=0) and run again.",
            zh="设置了 HF_HUB_OFFLINE，无法下载；请取消它（或设为 HF_HUB_OFFLINE=0）后重试。",
        )
    if isinstance(exc, GatedRepoError):
        return PullError(
            f"{name} on {host} is gated: accept its licence on the model's page, then set HF_TOKEN to your access "
            "token and run again.",
            zh=f"{host} 上的 {name} 需要授权：请先在模型页面同意许可，再把访问令牌设为 HF_TOKEN 后重试。",
        )
    if isinstance(exc, RevisionNotFoundError):
        return PullError(
            f"{name} on {host} has no such revision; check --revision (or leave it out for the default branch).",
            zh=f"{host} 上的 {name} 没有这个版本；请检查 --revision（或不填，使用默认分支）。",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return PullError(
            f"No model called {name} on {host}; check the spelling (owner/name, e.g. THUDM/glm-4-9b-chat-hf), "
            "or set HF_TOKEN if it is private.",
            zh=f"{host} 上没有名为 {name} 的模型；请检查拼写（owner/name，例如 THUDM/glm-4-9b-chat-hf），"
            "私有模型请设置 HF_TOKEN。",
        )
    if isinstance(exc, (httpx2.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return PullError(
            f"Cannot reach {host}: check the network; in mainland China use a mirror "
            "(HF_ENDPOINT=https://hf-mirror.com) or --source modelscope, then run again (finished files are kept).",
            zh=f"无法连接 {host}：请检查网络；在中国大陆可用镜像（HF_ENDPOINT=https://hf-mirror.com）"
            "或 --source modelscope，然后重试（已下载完的文件会保留）。",
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 401:
            return PullError(
                f"{host} refused the access token (HTTP 401); check HF_TOKEN, or unset it for a public model.",
                zh=f"{host} 拒绝了访问令牌（HTTP 401）；请检查 HF_TOKEN，公开模型可以不设置它。",
            )
        return PullError(
            f"{host} answered HTTP {status} while downloading {name}; try again later or use a mirror "
            "(HF_ENDPOINT=https://hf-mirror.com).",
            zh=f"下载 {name} 时 {host} 返回 HTTP {status}；请稍后重试，或使用镜像（HF_ENDPOINT=https://hf-mirror.com）。",
        )
    return None


def _hf_listing(values: dict) -> tuple[str, list[RemoteFile]]:
    """The commit the revision points at and its files — asked first, so that "offline" and "no such model" are said
    before anything is written (``snapshot_download`` alone would quietly return a partial folder when offline)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=_hf_endpoint(values))
    name = values["name"]
    info = api.model_info(name, revision=values.get("revision"))
    commit = info.sha or values.get("revision") or "main"
    files = [
        RemoteFile(f.path, int(f.size), f.lfs.sha256 if f.lfs else None, None if f.lfs else f.blob_id)
        for f in api.list_repo_tree(name, recursive=True, revision=commit)
        if isinstance(f, RepoFile)
    ]
    return commit, files


def _hf_download(values: dict, commit: str, dest: Path) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # our own bar counts the folder's bytes; theirs would draw a second one per file
    snapshot_download(
        values["name"],
        revision=commit,
        local_dir=dest,
        endpoint=_hf_endpoint(values),
        max_workers=int(values["workers"]),
    )


# ---- ModelScope -------------------------------------------------------------------------------------------------------
def _ms_endpoint(values: dict) -> str:
    return (values.get("endpoint") or os.environ.get("MODELSCOPE_ENDPOINT") or "https://www.modelscope.cn").rstrip("/")


def _need_modelscope() -> None:
    try:
        import modelscope_hub  # noqa: F401
    except ImportError:
        raise PullError(
            "The ModelScope client is not installed; install it with `pip install modelscope-hub==0.5.1`, "
            "or pull from Hugging Face (--source hf).",
            zh="没有安装 ModelScope 客户端；请用 `pip install modelscope-hub==0.5.1` 安装，或改从 Hugging Face 下载（--source hf）。",
        ) from None


def _ms_error(exc: BaseException, name: str, endpoint: str) -> PullError | None:
    from modelscope_hub import HubError, NetworkError, NotExistError
    from modelscope_hub.errors import AuthenticationError, PermissionDeniedError

    host = _host(endpoint)
    if isinstance(exc, NotExistError):
        return PullError(
            f"No model called {name} on {host}; check the spelling (owner/name, e.g. ZhipuAI/glm-4-9b-chat-hf).",
            zh=f"{host} 上没有名为 {name} 的模型；请检查拼写（owner/name，例如 ZhipuAI/glm-4-9b-chat-hf）。",
        )
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return PullError(
            f"{host} refused access to {name}; set MODELSCOPE_API_TOKEN to a token that may read it.",
            zh=f"{host} 拒绝访问 {name}；请把有读取权限的令牌设为 MODELSCOPE_API_TOKEN。",
        )
    if isinstance(exc, (NetworkError, ConnectionError, TimeoutError)) or type(exc).__module__.startswith(
        ("requests", "urllib3")
    ):
        return PullError(
            f"Cannot reach {host}: check the network, then run again (finished and partial files are kept).",
            zh=f"无法连接 {host}：请检查网络后重试（已下载的文件和未完成的部分都会保留）。",
        )
    if isinstance(exc, HubError):
        return PullError(
            f"{host} could not serve {name} ({exc}); try again later or pull from Hugging Face (--source hf).",
            zh=f"{host} 无法提供 {name}（{exc}）；请稍后重试，或改从 Hugging Face 下载（--source hf）。",
        )
    return None


def _ms_listing(values: dict) -> tuple[str, list[RemoteFile]]:
    from modelscope_hub import HubApi

    api = HubApi(endpoint=_ms_endpoint(values))
    files = [
        RemoteFile(f.path, int(f.size or 0), (f.sha256 or None))
        for f in api.list_repo_files(values["name"], "model", revision=values.get("revision"), recursive=True)
        if not f.is_dir
    ]
    return values.get("revision") or "master", files


def _ms_download(values: dict, commit: str, dest: Path) -> None:
    from modelscope_hub import HubApi

    # it draws its own per-file bars on a terminal (it has no switch for them); ours counts the whole folder
    HubApi(endpoint=_ms_endpoint(values)).download_repo(
        values["name"],
        "model",
        revision=values.get("revision"),
        local_dir=dest,
        max_workers=int(values["workers"]),
    )


# ---- the folder: writable, room enough, progress by its bytes ---------------------------------------------------------
def _os_error(exc: OSError, dest: Path) -> PullError | None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PullError(
            f"The disk holding {dest} is full; free space (or choose another --to) and run the same command again — "
            "finished files are kept.",
            zh=f"{dest} 所在的磁盘已满；请清理空间（或换一个 --to）后重新运行同一命令——已下载完的文件会保留。",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PullError(
            f"No permission to write in {dest}; choose a folder you own with --to (e.g. under your home or /root/autodl-tmp).",
            zh=f"没有写入 {dest} 的权限；请用 --to 换一个自己的文件夹（例如家目录或 /root/autodl-tmp 下）。",
        )
    return None


def _prepare(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise PullError(
            f"{dest} is a file, not a folder; give --to a folder for the model.",
            zh=f"{dest} 是文件而不是文件夹；请给 --to 一个用于存放模型的文件夹。",
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
        probe = dest / ".umtcds-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise (_os_error(exc, dest) or exc) from None


def _complete(dest: Path, f: RemoteFile) -> bool:
    p = dest / f.path
    return p.is_file() and p.stat().st_size == f.size


def _check_space(dest: Path, files: list[RemoteFile]) -> int:
    """Bytes still to fetch; a sentence before the first byte when the disk cannot hold them."""
    need = sum(f.size for f in files if not _complete(dest, f))
    free = shutil.disk_usage(dest).free
    if need > free:
        raise PullError(
            f"{_gb(need)} still to download but only {_gb(free)} free where {dest} is; free space or choose another "
            "--to (on AutoDL the data disk /root/autodl-tmp).",
            zh=f"还需下载 {_gb(need)}，但 {dest} 所在位置只剩 {_gb(free)}；请清理空间或换一个 --to"
            "（AutoDL 上可用数据盘 /root/autodl-tmp）。",
        )
    return need


def _bytes_on_disk(dest: Path, files: list[RemoteFile]) -> int:
    done = 0
    for f in files:
        try:
            done += min((dest / f.path).stat().st_size, f.size)
        except OSError:
            pass
    for p in dest.rglob("*.incomplete"):  # both libraries' partial files
        try:
            done += p.stat().st_size
        except OSError:
            pass
    return done


class _Watch:
    """Counts the folder's bytes every half second into a :class:`~umtcds_core.progress.Progress` (MB) and, when
    stderr is not a terminal (a job's log), a plain line every few seconds. Library-neutral: both hubs' downloaders
    write into the folder, so the bytes there are the progress, whatever their internals."""

    def __init__(self, dest: Path, files: list[RemoteFile], progress, log: Callable[[str], None]):
        self.dest, self.files, self.progress, self.log = dest, files, progress, log
        self.total = sum(f.size for f in files)
        self.start_bytes = _bytes_on_disk(dest, files)
        self._mb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pull-progress", daemon=True)
        self._last_log = 0.0
        self._t0 = time.time()
        self._plain = not sys.stderr.isatty()

    def __enter__(self) -> _Watch:
        if self.progress is not None:
            self.progress.set_total(max(1, round(self.total / 1e6)))
        self.tick()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.tick(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.tick()

    def tick(self, final: bool = False) -> None:
        done = min(_bytes_on_disk(self.dest, self.files), self.total)
        mb = round(done / 1e6)
        if self.progress is not None and mb != self._mb:
            self.progress.update(mb - self._mb, message=f"{_gb(done)} / {_gb(self.total)}")
            self._mb = mb
        now = time.time()
        if self._plain and (final or now - self._last_log >= LOG_EVERY_S):
            self._last_log = now
            rate = max(0, done - self.start_bytes) / max(now - self._t0, 1e-6)
            pct = 100 * done / self.total if self.total else 100
            self.log(f"pull: {_gb(done)} / {_gb(self.total)} ({pct:.0f}%), {rate / 1e6:.1f} MB/s")


# ---- after the download: the hub's sizes and checksums, then "is it a model?" -----------------------------------------
def _hash(path: Path, f: RemoteFile) -> tuple[str, str]:
    """(algorithm, hex digest) of the file, in the form the hub lists for it."""
    if f.sha256:
        h = hashlib.sha256()
        algo = "sha256"
    else:
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
        algo = "git blob id"
    with path.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return algo, h.hexdigest()


def verify(dest: Path, files: list[RemoteFile], checksums: bool = True, progress=None) -> None:
    """Every listed file present with its listed size and (``checksums``) digest; a damaged file is removed and named
    in one sentence, so running the same command again fetches it anew."""
    missing = [f.path for f in files if not (dest / f.path).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PullError(
            f"{missing[0]}{more} did not arrive in {dest}; run the same command again to fetch what is missing.",
            zh=f"{missing[0]}{' 等 ' + str(len(missing)) + ' 个文件' if len(missing) > 1 else ''}没有下载到 {dest}；"
            "请重新运行同一命令补齐。",
        )
    for f in files:
        path = dest / f.path
        size = path.stat().st_size
        bad = None
        if size != f.size:
            bad = (f"is {size} bytes but the hub lists {f.size}", f"有 {size} 字节，而 Hub 列出的是 {f.size} 字节")
        elif checksums and (f.sha256 or f.git_oid):
            if progress is not None:
                progress.update(0, message=f"verifying {f.path}")
            algo, digest = _hash(path, f)
            want = (f.sha256 or f.git_oid or "").lower()
            if digest != want:
                bad = (
                    f"has {algo} {digest[:12]}… but the hub lists {want[:12]}… (a damaged download)",
                    f"的 {algo} 是 {digest[:12]}…，而 Hub 列出的是 {want[:12]}…（下载已损坏）",
                )
        if bad:
            path.unlink(missing_ok=True)
            raise PullError(
                f"{f.path} {bad[0]}; it was removed — run the same command again to download it anew.",
                zh=f"{f.path} {bad[1]}；已删除该文件——请重新运行同一命令重新下载。",
            )


def check_model_folder(dest: Path) -> list[str]:
    """Raise when the folder cannot be a chat model (no config.json / tokenizer / weights); returns warnings."""
    cfg_file = dest / "config.json"
    if not cfg_file.is_file():
        raise PullError(
            f"{dest} has no config.json, so it is not a transformers model folder; pull a model repository "
            "(e.g. THUDM/glm-4-9b-chat-hf), not a dataset or a GGUF-only one.",
            zh=f"{dest} 里没有 config.json，不是 transformers 模型文件夹；请下载模型仓库（例如 THUDM/glm-4-9b-chat-hf），"
            "而不是数据集或只有 GGUF 的仓库。",
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PullError(
            f"{cfg_file} is not valid JSON; remove it and run the same command again.",
            zh=f"{cfg_file} 不是有效的 JSON；请删除它后重新运行同一命令。",
        ) from None
    if not any((dest / t).is_file() for t in TOKENIZER_FILES):
        raise PullError(
            f"{dest} has no tokenizer (tokenizer.json / tokenizer_config.json / tokenizer.model); this repository "
            "holds weights only — pull the chat model's own repository.",
            zh=f"{dest} 里没有分词器（tokenizer.json / tokenizer_config.json / tokenizer.model）；这个仓库只有权重——"
            "请下载对话模型本身的仓库。",
        )
    warnings = []
    if not any(p.suffix in WEIGHT_SUFFIXES for p in dest.iterdir() if p.is_file()):
        warnings.append(f"{dest} has no weight files (*.safetensors / *.bin); is this the full model repository?")
    if not isinstance(cfg, dict):
        raise PullError(
            f"{cfg_file} is not a model config (a JSON object); remove it and run the same command again.",
            zh=f"{cfg_file} 不是模型配置（JSON 对象）；请删除它后重新运行同一命令。",
        )
    from .models import ModelError, resolve

    try:
        resolve(str(dest))  # the loader's own check: e.g. the old remote-code GLM-4 is refused, naming the -hf repo
    except ModelError as exc:
        raise PullError(str(exc), zh=exc.zh) from None
    return warnings


# ---- the command ------------------------------------------------------------------------------------------------------
SOURCES = {
    "hf": (_hf_endpoint, _hf_listing, _hf_download, _hf_error),
    "modelscope": (_ms_endpoint, _ms_listing, _ms_download, _ms_error),
}


def pull(values: dict, progress=None, log: Callable[[str], None] | None = None) -> PullResult:
    """Download ``values["name"]`` into ``values["to"]`` (settings of :data:`PULL`), verify it and check it is a model.

    Every failure the user can fix is a :class:`PullError` sentence; files already complete stay for the next run."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    values = PULL.check(values)
    name, to, source = values["name"], values["to"], values["source"]
    if not name:
        raise PullError(
            "No model named: give NAME, e.g. `umtcds models pull THUDM/glm-4-9b-chat-hf --to models/glm-4-9b-chat-hf`.",
            zh="没有给出模型名称：请写 NAME，例如 `umtcds models pull THUDM/glm-4-9b-chat-hf --to models/glm-4-9b-chat-hf`。",
        )
    if not to:
        raise PullError(
            "No folder to download to: give --to DIR (e.g. --to models/glm-4-9b-chat-hf).",
            zh="没有指定下载文件夹：请用 --to DIR（例如 --to models/glm-4-9b-chat-hf）。",
        )
    if source == "modelscope":
        _need_modelscope()
    endpoint_of, listing, download, error_of = SOURCES[source]
    endpoint = endpoint_of(values)
    dest = Path(to).expanduser()
    t0 = time.time()

    def said(exc: BaseException) -> BaseException:
        if isinstance(exc, UserError):
            return exc
        out = error_of(exc, name, endpoint)
        if out is None and isinstance(exc, OSError):
            out = _os_error(exc, dest)
        return out or exc

    try:
        revision, files = listing(values)
    except Exception as exc:  # noqa: BLE001 - turned into one sentence where we know the kind; re-raised otherwise
        raise said(exc) from None
    if not files:
        raise PullError(
            f"{name} on {_host(endpoint)} has no files at this revision; check the name and --revision.",
            zh=f"{_host(endpoint)} 上的 {name} 在这个版本下没有文件；请检查名称和 --revision。",
        )
    _prepare(dest)
    need = _check_space(dest, files)
    log(f"pull: {name} from {_host(endpoint)} ({len(files)} files, {_gb(sum(f.size for f in files))}) into {dest}")
    try:
        with _Watch(dest, files, progress, log):
            download(values, revision, dest)
    except Exception as exc:  # noqa: BLE001 - as above
        raise said(exc) from None
    verify(dest, files, checksums=bool(values["verify"]), progress=progress)
    warnings = check_model_folder(dest)
    return PullResult(
        name,
        source,
        dest,
        revision,
        len(files),
        sum(f.size for f in files),
        need,
        time.time() - t0,
        bool(values["verify"]),
        tuple(warnings),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser(
        "pull",
        help="download a chat model from Hugging Face or ModelScope into a folder, checked",
        description="Download a chat model (e.g. THUDM/glm-4-9b-chat-hf) into --to DIR: resumable, verified "
        "against the hub's checksums, then checked to load as a model. HF_ENDPOINT picks a Hugging Face mirror.",
    )
    p.add_argument("name", metavar="NAME", nargs="?", help="the model id, owner/name (e.g. THUDM/glm-4-9b-chat-hf)")
    PULL.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from .progress import Progress

    values = PULL.from_args(args)
    with Progress(None, unit="MB", desc="pull") as progress:
        result = pull(values, progress=progress)
    print(result.sentence())
    for w in result.warnings:
        print(f"Warning: {w}", file=sys.stderr)
    print(result.hint())
    return 0
