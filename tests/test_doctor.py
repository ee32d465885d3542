"""`narrate doctor` through the CLI: real adapters against local folders, fake-gcs-server and the
RTDB test server; broken targets give FAIL lines with hints and a non-zero exit."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.gcs import FakeGcs
from support.rtdb_server import RTDBTarget

from narrate.cli import cli
from narrate.doctor import (
    CHECKS,
    PROBE_PREFIX,
    Skipped,
    Targets,
    check_compiler,
    run_checks,
)
from narrate.errors import EngineError

PREVIEW_ON_CPU = ["--engine", "preview", "--devices", "cpu"]


def doctor(*args: str) -> tuple[int, dict[str, dict]]:
    """Exit code and the checks by name, from `narrate doctor --json ARGS`."""
    result = CliRunner().invoke(cli, ["doctor", "--json", *args])
    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert list(checks) == [name for name, _ in CHECKS]
    assert report["status"] == ("ok" if result.exit_code == 0 else "fail")
    return result.exit_code, checks


def local_outputs(tmp_path: Path) -> list[str]:
    return ["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]


def local_targets(tmp_path: Path) -> list[str]:
    """Local folders, and no AudioSeal download (the watermark tests name local checkpoints)."""
    return ["--no-watermark", *local_outputs(tmp_path)]


def write_csm_config(folder: Path) -> None:
    from transformers import CsmConfig

    folder.mkdir(parents=True, exist_ok=True)
    CsmConfig().to_json_file(folder / "config.json")


def test_local_preview_targets_pass_and_leave_nothing_behind(tmp_path: Path) -> None:
    code, checks = doctor(*PREVIEW_ON_CPU, *local_targets(tmp_path))
    failed = {name: check for name, check in checks.items() if check["status"] == "fail"}
    assert code == 0, failed
    for name in ("python", "packages", "espeak", "storage", "cache", "database"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "write, read and delete work" in checks["storage"]["detail"]
    for name in ("devices", "model", "watermark"):
        assert checks[name]["status"] == "skip", checks[name]
    status_files = ("status.json", ".status.json.lock")  # the lock lets shards share the file
    leftovers = [
        p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name not in status_files
    ]
    assert leftovers == [] and list((tmp_path / "cache").rglob("*.probe")) == []
    assert json.loads((tmp_path / "out" / "status.json").read_text()) == {}


def test_a_missing_model_directory_fails_with_a_hint(tmp_path: Path) -> None:
    args = ["--model", str(tmp_path / "no-such-model"), *local_targets(tmp_path)]
    code, checks = doctor(*args)
    assert code == 1
    assert checks["model"]["status"] == "fail"
    assert "no such directory" in checks["model"]["detail"]
    assert "sesame/csm-1b" in checks["model"]["hint"]

    text = CliRunner().invoke(cli, ["doctor", *args])
    assert text.exit_code == 1
    assert "FAIL  model" in text.stdout and "fix: pass a directory" in text.stdout
    assert text.stdout.rstrip().splitlines()[-1].endswith("SKIP")  # the summary line


def test_a_local_csm_model_and_its_codec_pass(tiny_model_dir: Path, tmp_path: Path) -> None:
    _, checks = doctor("--model", str(tiny_model_dir), *local_targets(tmp_path))
    assert checks["model"]["status"] == "ok", checks["model"]
    assert "CSM config and processor load; weights readable" in checks["model"]["detail"]
    assert checks["codec"]["status"] == "ok", checks["codec"]
    assert "mimi.safetensors" in checks["codec"]["detail"]


def test_a_model_without_codec_weights_offline_fails(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = shutil.copytree(
        tiny_model_dir, tmp_path / "no-codec", ignore=lambda *_: ["mimi.safetensors"]
    )
    _, checks = doctor("--model", str(model), *local_targets(tmp_path))
    assert checks["model"]["status"] == "ok"
    assert checks["codec"]["status"] == "fail"
    assert "Mimi codec weights" in checks["codec"]["detail"]
    assert "--model folder" in checks["codec"]["hint"]


def test_weights_that_are_a_git_lfs_pointer_fail(tmp_path: Path) -> None:
    model = tmp_path / "csm"
    write_csm_config(model)
    (model / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 6000000000\n"
    )
    _, checks = doctor("--model", str(model), *local_targets(tmp_path))
    assert checks["model"]["status"] == "fail"
    assert "not a readable safetensors file" in checks["model"]["detail"]
    assert "git lfs pull" in checks["model"]["hint"]


def test_a_model_that_is_not_csm_fails(tmp_path: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import BertConfig

    model = tmp_path / "bert"
    model.mkdir()
    BertConfig().to_json_file(model / "config.json")
    save_file({"w": __import__("numpy").zeros(4, dtype="float32")}, model / "model.safetensors")
    _, checks = doctor("--model", str(model), *local_targets(tmp_path))
    assert checks["model"]["status"] == "fail"
    assert "'bert' model, not CSM" in checks["model"]["detail"]


def test_a_hub_model_missing_from_the_offline_cache_names_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _, checks = doctor("--model", "sesame/csm-1b", *local_targets(tmp_path))
    assert checks["model"]["status"] == "fail"
    assert "not in the Hugging Face cache" in checks["model"]["detail"]
    assert "hf download sesame/csm-1b" in checks["model"]["hint"]


def test_local_audioseal_checkpoints_embed_and_detect(audioseal_dir: Path, tmp_path: Path) -> None:
    args = [*PREVIEW_ON_CPU, "--watermark-model", str(audioseal_dir), *local_outputs(tmp_path)]
    code, checks = doctor(*args)
    assert checks["watermark"]["status"] == "ok", checks["watermark"]
    assert "generator_base.pth embeds" in checks["watermark"]["detail"]
    assert "reads back payload" in checks["watermark"]["detail"]
    assert code == 0


def test_missing_audioseal_checkpoints_fail_naming_the_opt_out(tmp_path: Path) -> None:
    empty = tmp_path / "audioseal"
    empty.mkdir()
    args = [*PREVIEW_ON_CPU, "--watermark-model", str(empty), *local_outputs(tmp_path)]
    code, checks = doctor(*args)
    assert code == 1
    assert checks["watermark"]["status"] == "fail"
    assert "AudioSeal" in checks["watermark"]["detail"]
    assert "--no-watermark" in checks["watermark"]["hint"]


def test_a_gpu_that_is_not_there_fails(tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code, checks = doctor(*PREVIEW_ON_CPU[:2], "--devices", "cuda:7", *local_targets(tmp_path))
    assert code == 1
    assert checks["devices"]["status"] == "fail"
    assert "cuda:7 does not exist" in checks["devices"]["detail"]
    assert "nvidia-smi" in checks["devices"]["hint"]


def test_an_output_that_cannot_be_written_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [*local_targets(tmp_path), *PREVIEW_ON_CPU, "--out", str(blocker / "out")]
    code, checks = doctor(*args)
    assert code == 1
    assert checks["storage"]["status"] == "fail"
    assert checks["cache"]["status"] == "ok"


def test_cloud_storage_and_realtime_database_probes(
    gcs_bucket: str, fake_gcs: FakeGcs, rtdb: RTDBTarget
) -> None:
    code, checks = doctor(
        *PREVIEW_ON_CPU,
        "--no-watermark",
        "--out",
        f"gs://{gcs_bucket}",
        "--cache",
        f"gs://{gcs_bucket}/narrate-cache",
        "--database",
        rtdb.url,
    )
    for name in ("storage", "cache", "database"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["storage"]["detail"].startswith(f"gs://{gcs_bucket}:")
    assert checks["database"]["detail"].startswith(rtdb.url)
    listing = f"{fake_gcs.url}/storage/v1/b/{gcs_bucket}/o"
    with urllib.request.urlopen(listing, timeout=10) as response:
        assert json.load(response).get("items", []) == []  # the probes were deleted
    assert rtdb.rest("GET", PROBE_PREFIX) is None
    assert code == 0


def test_a_database_that_refuses_writes_fails_with_a_hint(rtdb: RTDBTarget, tmp_path: Path) -> None:
    rtdb.require_server().denied.add(rtdb.namespace)
    code, checks = doctor(*PREVIEW_ON_CPU, *local_targets(tmp_path), "--database", rtdb.url)
    assert code == 1
    assert checks["database"]["status"] == "fail"
    assert checks["database"]["hint"]


def test_a_database_url_that_is_not_one_fails(tmp_path: Path) -> None:
    _, checks = doctor(*PREVIEW_ON_CPU, *local_targets(tmp_path), "--database", "ftp://x")
    assert checks["database"]["status"] == "fail"
    assert "https://PROJECT.firebaseio.com" in checks["database"]["hint"]


@pytest.mark.parametrize(
    ("env", "compiler", "passes"),
    [
        ({}, False, False),
        ({"NO_TORCH_COMPILE": "1"}, False, True),
        ({"TORCH_COMPILE_DISABLE": "1"}, False, True),
        ({}, True, True),
    ],
)
def test_a_gpu_run_needs_a_c_compiler_or_no_torch_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict, compiler: bool, passes: bool
) -> None:
    for name in ("NO_TORCH_COMPILE", "TORCH_COMPILE_DISABLE", "CC"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if compiler:
        (bin_dir / "gcc").write_text("#!/bin/sh\n")
        (bin_dir / "gcc").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    if passes:
        detail = check_compiler(Targets(devices="cuda:0"))
        assert ("gcc" if compiler else "is set") in detail
    else:
        with pytest.raises(EngineError) as failed:
            check_compiler(Targets(devices="cuda:0"))
        assert "NO_TORCH_COMPILE=1" in (failed.value.hint or "")


def test_the_compiler_check_is_skipped_without_a_cuda_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("NO_TORCH_COMPILE", raising=False)
    for targets in (Targets(devices="cpu"), Targets(engine="preview", devices="cuda:0")):
        with pytest.raises(Skipped):
            check_compiler(targets)


@pytest.fixture
def unanswering_server() -> Iterator[str]:
    """A host:port that accepts connections and never answers (a firewall that swallows
    replies, a proxy that hangs): clients wait out their timeouts and retries."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def test_a_storage_that_never_answers_fails_its_check_within_the_probe_bound(
    unanswering_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", unanswering_server)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    targets = Targets(
        engine="preview",
        devices="cpu",
        out="gs://narrate-unanswered",
        cache=str(tmp_path / "cache"),
        watermark=False,
    )
    started = time.monotonic()

    checks = {check.name: check for check in run_checks(targets, timeout_s=3)}

    assert time.monotonic() - started < 45
    assert checks["storage"].status == "fail"
    assert checks["storage"].detail == "no answer within 3 s" and checks["storage"].hint
    assert checks["cache"].status == "ok"  # the others still ran
