"""`narrate doctor`: can this machine run narrate against these targets?

The batch counterpart of the original service's `/health` endpoint (`--json` answers with a
machine-readable status). Each check answers OK, FAIL (with a hint saying what to do) or SKIP
(does not apply to these targets). The checks use the run's own code paths (storage and
database adapters, model and codec loaders, the preview engine) against the exact targets an
operator passes, so an OK means the run can do it: storage and database checks write, read back
and delete a probe.

A check passes by returning its detail line, is skipped by raising `Skipped`, and fails by
raising a NarrateError (message + hint), which is also how the adapters it calls report trouble.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from narrate.errors import (
    DatabaseError,
    EngineError,
    ModelError,
    NarrateError,
    StorageError,
    first_line,
)
from narrate.options import CatalogOptions, DeviceOptions, OutputOptions, RunOptions
from narrate.synth.registry import DEFAULT_ENGINE, ENGINES, engine_spec

Status = Literal["ok", "fail", "skip"]

PROBE_TIMEOUT_S = 60.0  # longest any one check may take
HUB_PROBE_TIMEOUT_S = 3.0  # one request to the Hub: the loaders' own retries take ~25 s
_THREAD_PREFIX = "narrate-doctor-"
PROBE_PAYLOAD = 0b1010_0101_1100_0011  # any 16-bit value
PROBE_PREFIX = "narrate-doctor"  # "." is not allowed in database keys nor in our object names
_CORE_PACKAGES = ("torch", "torchaudio", "transformers", "moshi", "audioseal")
_REINSTALL_HINT = "reinstall the pinned stack: `make install` (or `pip install -e .`)"
_GPU_HINT = (
    "check `nvidia-smi`; with Docker pass `--gpus all`; on Kubernetes request nvidia.com/gpu "
    "and make sure the node has the NVIDIA driver installed"
)


@dataclass(frozen=True)
class Targets:
    """What the run will use: the same values as `narrate run`'s options."""

    engine: str = DEFAULT_ENGINE
    model: str = "sesame/csm-1b"
    devices: str = "auto"
    out: str = "out"
    cache: str = ".narrate/cache"
    database: str | None = None
    watermark: bool = True
    watermark_model: str | None = None

    @classmethod
    def of(cls, catalog: CatalogOptions, outputs: OutputOptions, workers: DeviceOptions) -> Targets:
        """The targets of a run given these options."""
        return cls(
            engine=catalog.engine.engine,
            model=catalog.engine.model,
            devices=workers.devices,
            out=outputs.out,
            cache=outputs.cache,
            database=outputs.database,
            watermark=outputs.post.watermark,
            watermark_model=outputs.post.watermark_model,
        )


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str | None = None


class Skipped(Exception):
    """The check does not apply to these targets."""

    def __init__(self, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


# ----------------------------------------------------------------------------- environment


def check_python(targets: Targets) -> str:
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.specifiers import SpecifierSet

    try:
        meta = metadata("narrate")
    except PackageNotFoundError:
        raise NarrateError("the narrate package is not installed", _REINSTALL_HINT) from None
    version = platform.python_version()
    supported = SpecifierSet(meta.get("Requires-Python") or "")
    if version not in supported:
        raise NarrateError(
            f"Python {version} is not supported (narrate needs {supported})",
            "create the environment with a supported Python, e.g. python3.11 -m venv .venv",
        )
    return f"Python {version} ({sys.executable}), narrate {meta['Version']}"


def check_packages(targets: Targets) -> str:
    """Every dependency narrate declares is installed at a version it accepts."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    problems, installed = [], {}
    for line in requires("narrate") or []:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue  # an optional extra (dev tools)
        try:
            installed[requirement.name] = version(requirement.name)
        except PackageNotFoundError:
            problems.append(f"{requirement.name} missing")
            continue
        if not requirement.specifier.contains(installed[requirement.name], prereleases=True):
            problems.append(f"{requirement.name} {installed[requirement.name]} (needs {line})")
    if problems:
        raise NarrateError("; ".join(problems), _REINSTALL_HINT)
    import torch

    core = [f"{name} {installed[name]}" for name in _CORE_PACKAGES if name in installed]
    built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    return f"{', '.join(core)}; torch built for {built_for}; {len(installed)} requirements met"


def check_devices(targets: Targets) -> str:
    """The CUDA devices the run would use (`--devices`, same parsing as `narrate run`)."""
    import torch

    from narrate.workers import resolve_devices

    devices = resolve_devices(targets.devices)
    wanted = [int(d.partition(":")[2] or 0) for d in devices if d.startswith("cuda")]
    available = torch.cuda.device_count()
    if not wanted:
        if targets.devices == "auto":
            build = "" if torch.version.cuda else " (this torch build has no CUDA support)"
            raise Skipped(f"no CUDA device{build}: the run would use the CPU", _GPU_HINT)
        raise Skipped(f"--devices {targets.devices}: no GPU used")
    if missing := [i for i in wanted if i >= available]:
        raise EngineError(
            f"--devices {targets.devices}: cuda:{missing[0]} does not exist "
            f"({available} CUDA device(s) visible)",
            _GPU_HINT,
        )
    lines = []
    for index in wanted:
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        lines.append(
            f"cuda:{index} {props.name} (sm_{props.major}{props.minor}), "
            f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free"
        )
    return "; ".join(lines)


# ----------------------------------------------------------------------------- models


def check_model(targets: Targets) -> str:
    """CSM config, processor and weights reachable: a local directory, the HF cache, or the Hub."""
    if not engine_spec(targets.engine).csm_checkpoint:
        raise Skipped(f"--engine {targets.engine} uses no CSM model")
    path = Path(targets.model).expanduser()
    if path.is_dir():
        where, weights = str(path), _local_weights(path)
    elif targets.model.startswith(("/", ".", "~")) or targets.model.count("/") != 1:
        raise ModelError(
            f"--model {targets.model}: no such directory, and not a Hugging Face id (ORG/NAME)",
            "pass a directory saved with save_pretrained, or a Hugging Face id like sesame/csm-1b",
        )
    else:
        _hub_config(targets.model)
        where, weights = f"{targets.model} (Hugging Face)", _hub_weights(targets.model)
    from huggingface_hub import constants
    from transformers import AutoConfig, AutoProcessor

    # cached, with the Hub unreachable: read the cache without minutes of retries first
    local = constants.HF_HUB_OFFLINE or _hub_unreachable(constants.ENDPOINT) is not None

    hint = (
        "a model directory needs config.json and the processor files (tokenizer, "
        "preprocessor_config.json) as save_pretrained writes them"
    )
    try:
        config = AutoConfig.from_pretrained(targets.model, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelError(f"--model {targets.model}: {first_line(exc)}", hint) from None
    if config.model_type != "csm":
        raise ModelError(
            f"--model {targets.model} is a {config.model_type!r} model, not CSM",
            "pass a transformers CSM checkpoint such as sesame/csm-1b",
        )
    try:
        AutoProcessor.from_pretrained(targets.model, local_files_only=local)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"--model {targets.model}: no processor: {first_line(exc)}", hint
        ) from None
    return f"{where}: CSM config and processor load; {weights}"


def _local_weights(path: Path) -> str:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(
            f"no *.safetensors weights in {path}",
            f"download them: `hf download sesame/csm-1b --local-dir {path}`",
        )
    return _readable_weights(files)


def _readable_weights(files: list[Path]) -> str:
    """Read each file's header (not the tensors): catches truncated files and LFS pointers."""
    from safetensors import SafetensorError, safe_open

    tensors = 0
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as weights:
                tensors += len(list(weights.keys()))
        except (SafetensorError, OSError) as exc:
            raise ModelError(
                f"{file} is not a readable safetensors file ({exc})",
                "a Git LFS pointer or an interrupted download: fetch the weights again "
                "(`hf download` or `git lfs pull`)",
            ) from None
    size = sum(f.stat().st_size for f in files) / 2**30
    return f"weights readable ({len(files)} file(s), {tensors} tensors, {size:.2f} GiB)"


@functools.cache
def _hub_unreachable(endpoint: str) -> str | None:
    """Why the Hub at `endpoint` cannot be reached (None: it answers, whatever the answer).
    One request and one retry, a few seconds each: hf_hub_download retries a refused
    connection or a failed DNS lookup for ~25 s before it says anything."""
    import requests

    for attempt in range(2):
        try:
            requests.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S, allow_redirects=False)
            return None
        except requests.RequestException as exc:
            reason = first_line(exc)
            if attempt == 0:
                time.sleep(1.0)
    return reason


def _not_cached(repo: str, what: str, reason: str) -> ModelError:
    from huggingface_hub import constants

    return ModelError(
        f"{what} not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}",
        f"download it once where the Hub is reachable: `hf download {repo}` (with HF_TOKEN "
        "for gated models) into the same HF_HOME, or pass --model DIR",
    )


def _hub_config(repo: str) -> None:
    """Fetch config.json through the HF cache, turning access problems into precise hints:
    the Hub unreachable, the model gated, and downloads off each say so."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    if not constants.HF_HUB_OFFLINE:
        unreachable = _hub_unreachable(constants.ENDPOINT)
        if unreachable is not None:
            if isinstance(try_to_load_from_cache(repo, "config.json"), str):
                return  # cached: a run loads it from there
            reason = f"the Hub ({constants.ENDPOINT}) is unreachable: {unreachable}"
            raise _not_cached(repo, f"{repo} is", reason)
    try:
        hf_hub_download(repo, "config.json")
    except GatedRepoError:
        raise ModelError(
            f"{repo} is gated and this machine has no access to it",
            f"accept the model's terms at https://huggingface.co/{repo}, then set HF_TOKEN "
            "to a read token of that account (or run `hf auth login`)",
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"{repo}: no such model on Hugging Face, or it is private",
            "check --model; a private model needs HF_TOKEN; a local directory works too",
        ) from None
    except LocalEntryNotFoundError:
        offline = (
            "downloads are off (HF_HUB_OFFLINE=1)"
            if constants.HF_HUB_OFFLINE
            else "the Hub is unreachable"
        )
        raise _not_cached(repo, f"{repo} is", offline) from None
    except HfHubHTTPError as exc:
        raise ModelError(f"Hugging Face answered: {first_line(exc)}", "retry later") from None


def _hub_weights(repo: str) -> str:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "model.safetensors")
    if isinstance(cached, str):
        return _readable_weights([Path(cached)])
    if constants.HF_HUB_OFFLINE:
        raise ModelError(
            f"the weights of {repo} are not in the cache ({constants.HF_HUB_CACHE}) and "
            "downloads are off (HF_HUB_OFFLINE=1)",
            f"download them once: `hf download {repo}`, or unset HF_HUB_OFFLINE",
        )
    return f"weights not cached yet: the first run downloads them into {constants.HF_HUB_CACHE}"


def check_model_cache(targets: Targets) -> str:
    """Model downloads land in HF_HOME: it must be writable unless it is pre-filled and offline."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    existing = next(p for p in (cache, *cache.parents) if p.exists())
    if _writable(existing):
        return f"{cache} is writable"
    if constants.HF_HUB_OFFLINE:
        return f"{cache} is read-only; fine offline (HF_HUB_OFFLINE=1) with the models in it"
    raise ModelError(
        f"{cache} is not writable, so models cannot be downloaded",
        "mount a volume writable by this user at HF_HOME (Kubernetes: fsGroup 10001), or "
        "pre-fill it and set HF_HUB_OFFLINE=1",
    )


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_watermark(targets: Targets) -> str:
    """AudioSeal: the generator marks a second of audio, the detector reads the mark back.

    Only trained weights decode the payload; the line shows what came back.
    """
    if not targets.watermark:
        raise Skipped("--no-watermark: files would be published without the AudioSeal watermark")
    import numpy as np

    from narrate.config import SAMPLE_RATE
    from narrate.post.watermark import Watermarker, resolve_checkpoints

    watermarker = Watermarker.load(targets.watermark_model)
    seconds = np.arange(SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
    noise = np.random.default_rng(0).normal(0, 0.02, SAMPLE_RATE).astype(np.float32)
    tone = 0.1 * np.sin(2 * np.pi * 220 * seconds) + noise  # a mark needs content to hide in
    marked = watermarker.apply(tone, payload=PROBE_PAYLOAD)
    if marked.shape != (SAMPLE_RATE,) or not np.isfinite(marked).all():
        raise ModelError("the AudioSeal generator loads but returns no usable watermark")
    found = watermarker.detect(marked, SAMPLE_RATE)
    generator, detector = resolve_checkpoints(targets.watermark_model)
    return (
        f"AudioSeal generator {generator} embeds, detector {detector} reads back payload "
        f"{found.payload} (embedded {PROBE_PAYLOAD}) with probability {found.probability:.2f}"
    )


def check_codec(targets: Targets) -> str:
    """The Mimi codec weights the CSM engine decodes with, found as the engine finds them."""
    if not engine_spec(targets.engine).csm_checkpoint:
        raise Skipped(f"--engine {targets.engine} uses no Mimi codec")
    from huggingface_hub import constants, try_to_load_from_cache
    from moshi.models import loaders

    from narrate.synth.mimi import weights_source

    unreachable = None if constants.HF_HUB_OFFLINE else _hub_unreachable(constants.ENDPOINT)
    cached = try_to_load_from_cache(loaders.DEFAULT_REPO, loaders.MIMI_NAME)
    # a --model folder may hold the codec; else, without the Hub, only the cache can
    if unreachable and not Path(targets.model).is_dir() and not isinstance(cached, str):
        what = f"the Mimi codec weights ({loaders.DEFAULT_REPO}) are"
        reason = f"the Hub ({constants.ENDPOINT}) is unreachable: {unreachable}"
        raise _not_cached(loaders.DEFAULT_REPO, what, reason)
    path, _ = weights_source(targets.model)
    return f"Mimi {path}: {_readable_weights([path])}"


def check_compiler(targets: Targets) -> str:
    """moshi compiles Mimi with torch.compile (lazily, on first use); on CUDA that builds
    kernels with a C compiler at run time, so a GPU run needs one, or NO_TORCH_COMPILE set
    before moshi is imported (the Docker image sets it: it has no compiler)."""
    from narrate.workers import resolve_devices

    if not engine_spec(targets.engine).csm_checkpoint or not any(
        d.startswith("cuda") for d in resolve_devices(targets.devices)
    ):
        raise Skipped("no CUDA worker: Mimi runs without torch.compile's kernels")
    for switch in ("NO_TORCH_COMPILE", "TORCH_COMPILE_DISABLE"):
        if os.environ.get(switch):  # moshi only tests that the variable is non-empty
            return f"{switch} is set: Mimi runs without torch.compile"
    compiler = next(
        (
            found
            for name in (os.environ.get("CC"), "cc", "gcc", "clang")
            if name and (found := shutil.which(name))
        ),
        None,
    )
    if compiler is None:
        raise EngineError(
            "no C compiler on PATH and NO_TORCH_COMPILE is unset: moshi's torch.compile of "
            "Mimi would fail at the first decode on the GPU",
            "set NO_TORCH_COMPILE=1 (as the narrate image does), or install gcc",
        )
    return f"C compiler {compiler} for moshi's torch.compile of Mimi"


def check_espeak(targets: Targets) -> str:
    """eSpeak NG speaks, through the engine built on it; only that engine needs it."""
    from narrate.config import SAMPLE_RATE, EngineConfig
    from narrate.records import Batch, Chunk
    from narrate.synth import load_engine

    probe = Chunk(chunk_id="narrate-doctor", book_id="narrate-doctor", index=0, text="Hello.")
    [espeak] = [spec.name for spec in ENGINES.values() if spec.espeak]
    try:
        engine = load_engine(EngineConfig(engine=espeak), device="cpu")
        try:
            (spoken,) = engine.synthesize(Batch((probe,)))
        finally:
            engine.close()
        if not spoken.ok:
            raise EngineError(f"eSpeak NG loads but does not speak: {spoken.error}")
    except NarrateError as exc:
        if targets.engine == espeak:
            raise
        raise Skipped(f"unavailable ({exc.message}); only --engine {espeak} needs it") from None
    return f"eSpeak NG speaks ({len(spoken.audio) / SAMPLE_RATE:.2f} s for {probe.text!r})"


# ----------------------------------------------------------------------------- outputs


def _probe_storage(uri: str) -> str:
    """Write, read back and delete a probe object: the run's own storage adapter and target."""
    from narrate.storage import open_storage

    storage = open_storage(uri, timeout=30.0)
    name = f"{PROBE_PREFIX}-{uuid.uuid4().hex}.probe"
    payload = f"narrate doctor probe {time.time()}".encode()
    if storage.put(name, payload, content_type="text/plain", overwrite=False) is None:
        raise StorageError(f"{storage.root}/{name} already existed; run doctor again")
    try:
        if storage.get(name) != payload:
            raise StorageError(f"{storage.root}/{name} read back different bytes than written")
    finally:
        storage.delete(name)
    if storage.stat(name) is not None:
        raise StorageError(f"{storage.root}/{name} is still there after delete")
    return f"{storage.root}: write, read and delete work"


def check_storage(targets: Targets) -> str:
    return _probe_storage(targets.out)


def check_cache(targets: Targets) -> str:
    return _probe_storage(targets.cache)


def check_database(targets: Targets) -> str:
    """Write, read back and delete a probe record under /narrate-doctor/."""
    from narrate.database import SERVER_TIMESTAMP, open_database
    from narrate.publish import status_file

    db = open_database(targets.database, status_file=status_file(targets.out), timeout=15.0)
    path = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    token = uuid.uuid4().hex
    try:
        db.update({path: {"token": token, "at": SERVER_TIMESTAMP}})
        try:
            record = db.get(path)
            if not isinstance(record, dict) or record.get("token") != token:
                raise DatabaseError(f"/{path} read back {record!r} instead of the probe")
        finally:
            db.update({path: None})
        if db.get(path) is not None:
            raise DatabaseError(f"/{path} is still there after delete")
    finally:
        db.close()
    where = targets.database or f"{status_file(targets.out)} (no --database)"
    return f"{where}: write, read and delete work"


CHECKS: tuple[tuple[str, Callable[[Targets], str]], ...] = (
    ("python", check_python),
    ("packages", check_packages),
    ("devices", check_devices),
    ("model", check_model),
    ("codec", check_codec),
    ("model-cache", check_model_cache),
    ("compiler", check_compiler),
    ("watermark", check_watermark),
    ("espeak", check_espeak),
    ("storage", check_storage),
    ("cache", check_cache),
    ("database", check_database),
)


def run_checks(targets: Targets, *, timeout_s: float = PROBE_TIMEOUT_S) -> list[Check]:
    """Every check, in order; one failing never stops the others, and none runs longer than
    `timeout_s`: a target that never answers (offline, a firewall dropping packets) fails its
    check instead of holding up the report while client libraries retry for minutes."""
    # loaders print progress on stdout (torch.hub downloads): keep it for our report
    with contextlib.redirect_stdout(sys.stderr):
        return [_bounded(name, check, targets, timeout_s) for name, check in CHECKS]


def _bounded(
    name: str, check: Callable[[Targets], str], targets: Targets, timeout_s: float
) -> Check:
    """The check's result, or a failure once it has run `timeout_s`. A check that overruns
    is left running on its daemon thread: nothing can stop a blocked network call, and
    `abandoned()` lets the caller exit without waiting for it."""
    results: list[Check] = []
    thread = threading.Thread(
        target=lambda: results.append(_run_check(name, check, targets)),
        name=f"{_THREAD_PREFIX}{name}",
        daemon=True,
    )
    thread.start()
    thread.join(timeout_s)
    if results:
        return results[0]
    return Check(
        name,
        "fail",
        f"no answer within {timeout_s:g} s",
        "the target did not respond: check the network, DNS, firewall or proxy between this "
        "machine and it, and that it is up",
    )


def _run_check(name: str, check: Callable[[Targets], str], targets: Targets) -> Check:
    try:
        return Check(name, "ok", check(targets))
    except Skipped as skip:
        return Check(name, "skip", skip.detail, skip.hint)
    except NarrateError as exc:
        return Check(name, "fail", exc.message, exc.hint)
    except ImportError as exc:
        return Check(name, "fail", f"cannot import: {exc}", _REINSTALL_HINT)
    except Exception as exc:  # a doctor reports every problem; it never stops at one
        return Check(name, "fail", f"{type(exc).__name__}: {first_line(exc)}")


def abandoned() -> bool:
    """Whether a check that overran is still blocked in the background."""
    return any(t.name.startswith(_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


def healthy(checks: list[Check]) -> bool:
    return all(check.status != "fail" for check in checks)


def render(checks: list[Check]) -> str:
    width = max(len(check.name) for check in checks) + 2
    lines = []
    for check in checks:
        lines.append(f"{check.status.upper():<6}{check.name:<{width}}{check.detail}")
        if check.hint:
            label = "fix" if check.status == "fail" else "note"
            lines.append(f"{'':<6}{'':<{width}}{label}: {check.hint}")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "fail", "skip")}
    lines.append(", ".join(f"{n} {s.upper()}" for s, n in counts.items()))
    return "\n".join(lines)


def to_json(checks: list[Check]) -> str:
    report = {"status": "ok" if healthy(checks) else "fail", "checks": [asdict(c) for c in checks]}
    return json.dumps(report, indent=2)


PREFLIGHT_TIMEOUT_S = 15.0  # an unreachable Hub fails the run's start within this


def preflight(options: RunOptions) -> list[NarrateError]:
    """What `narrate run` checks before it loads anything heavy: the doctor's checks of the
    model and its codec for these options (the outputs are not probed: the run's first
    requests find them; the watermark is checked by loading it), every failure at once, each
    within PREFLIGHT_TIMEOUT_S. Nothing to check for the preview engine: it costs no time."""
    return _model_preflight(Targets.of(options.catalog, options.outputs, options.workers))


def engine_preflight(engine: str, model: str) -> list[NarrateError]:
    """`preflight` for `narrate say`: an unreachable Hub, a gated model and one not cached
    while offline each get their own message, within PREFLIGHT_TIMEOUT_S, instead of the
    loaders' minutes of retries and one message for all three."""
    return _model_preflight(Targets(engine=engine, model=model))


def _model_preflight(targets: Targets) -> list[NarrateError]:
    if targets.engine != "csm":
        return []
    wanted = {"model", "codec"}
    with contextlib.redirect_stdout(sys.stderr):
        checks = [
            _bounded(name, check, targets, PREFLIGHT_TIMEOUT_S)
            for name, check in CHECKS
            if name in wanted
        ]
    return [ModelError(f"{c.name}: {c.detail}", c.hint) for c in checks if c.status == "fail"]
