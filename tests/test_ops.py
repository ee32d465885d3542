"""Operations files: the Dockerfile, the Kubernetes manifests in jobs/ and the demo targets.

None of them can run here (no Docker engine, no cluster), so these tests check what can be
checked offline: every manifest validates against Kubernetes' own schemas, every `narrate`
command line in them parses with the real click command (no drift between YAML and CLI), and
the Dockerfile (linted by hadolint, read by dockerfile-parse) copies files that exist and the
build context actually contains.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points, metadata
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from kubernetes_validate import utils as kubernetes_validate
from packaging.specifiers import SpecifierSet

from narrate.cli import cli
from narrate.errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from narrate.plan import Shard

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
KUSTOMIZATION = JOBS / "kustomization.yaml"
SPOT_PATCH = JOBS / "spot-patch.yaml"
# 1.33: the first release with backoffLimitPerIndex GA (podFailurePolicy is GA since 1.31);
# and the newest release whose schemas kubernetes-validate bundles
KUBERNETES_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())


def parse_narrate(argv: list[str]) -> click.Context:
    """Parse argv as the `narrate` console script would, options of the subcommand included."""
    command = cli.get_command(click.Context(cli), argv[0])
    assert command is not None, f"`narrate {argv[0]}` is not a command"
    return command.make_context(f"narrate {argv[0]}", list(argv[1:]))


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile(final_stage: bool = True) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs as dockerfile-parse reads them (continuation lines
    joined, comments dropped); those of the image's own (last) stage, or of every stage."""
    parsed = DockerfileParser(path=str(ROOT / "Dockerfile")).structure
    instructions = [(i["instruction"], i["value"]) for i in parsed if i["instruction"] != "COMMENT"]
    if final_stage:
        last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
        instructions = instructions[last_from:]
    return instructions


def arguments(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def env_settings() -> dict[str, str]:
    """The image's environment (its last stage), as dockerfile-parse resolves ENV."""
    return DockerfileParser(path=str(ROOT / "Dockerfile")).envs


def test_the_dockerfile_passes_hadolint() -> None:
    # findings the Dockerfile accepts on purpose carry a `# hadolint ignore=` with the reason
    hadolint = Path(sys.executable).with_name("hadolint")
    linted = subprocess.run(
        [str(hadolint), "--no-color", "--format", "json", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(linted.stdout) == [], linted.stdout


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.removeprefix("!").strip("/"))
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


def _glob_regex(pattern: str) -> str:
    tokens = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return "".join(wildcards.get(token, re.escape(token)) for token in tokens)


def source_files(source: Path) -> Iterator[str]:
    files = [source] if source.is_file() else sorted(source.rglob("*"))
    for file in files:
        # byte code and the extension pip built in place for this host are not sources
        if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".so":
            yield file.relative_to(ROOT).as_posix()


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    copies = [args for kw, args in dockerfile(final_stage=False) if kw == "COPY"]
    assert copies
    for args in copies:
        if args.startswith("--from="):  # from an earlier stage, not the build context
            continue
        sources = [part for part in args.split() if not part.startswith("--")][:-1]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            files = list(source_files(path))
            assert files, f"COPY {source}: nothing to copy"
            left_out = [f for f in files if dockerignore_excludes(f)]
            assert not left_out, f".dockerignore keeps these out of COPY {source}: {left_out}"


def test_the_build_context_leaves_out_environments_outputs_and_credentials() -> None:
    for path in (
        ".venv/bin/python",
        ".git/config",
        "out/book.wav",
        ".narrate/cache/ab/abc.flac",
        "service-account.json",
        "tests/test_ops.py",
        "narrate/__pycache__/cli.cpython-311.pyc",
        "narrate/_textcore.cpython-311-x86_64-linux-gnu.so",  # built for this host, not the image
    ):
        assert dockerignore_excludes(path), path


def test_the_dependency_layer_installs_exactly_the_declared_dependencies() -> None:
    """Run the Dockerfile's own requirements extraction; only pyproject.toml is copied first."""
    tomllib = pytest.importorskip("tomllib", reason="the image's Python (3.11) has tomllib")
    steps = [(kw, args) for kw, args in dockerfile() if kw in ("COPY", "RUN")]
    (deps,) = [i for i, (_, args) in enumerate(steps) if "tomllib" in args]
    script = shlex.split(steps[deps][1])[shlex.split(steps[deps][1]).index("-c") + 1]
    printed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert printed == [d.replace(" ", "") for d in declared]
    copied_first = [args.split()[0] for kw, args in steps[:deps] if kw == "COPY"]
    assert copied_first == ["pyproject.toml"], "source changes must not rebuild the deps layer"


def test_the_text_core_is_compiled_in_a_build_stage_and_installed_as_a_wheel() -> None:
    stages = [args for kw, args in dockerfile(final_stage=False) if kw == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    assert stages[0].split()[0] == stages[1], "the wheel is built for the image's own Python"
    build = dockerfile(final_stage=False)[: len(dockerfile(final_stage=False)) - len(dockerfile())]
    runs = " ".join(args for kw, args in build if kw == "RUN")
    assert "g++" in runs and "pip wheel" in runs
    runtime = " ".join(args for kw, args in dockerfile() if kw in ("COPY", "RUN"))
    assert "--from=build" in runtime and "pip install --no-deps /wheels/" in runtime
    assert "g++" not in runtime, "the compiler stays out of the image"


def test_the_image_runs_narrate_as_a_non_root_user() -> None:
    (entrypoint,) = arguments("ENTRYPOINT")
    assert json.loads(entrypoint) == ["narrate"]
    (script,) = entry_points(group="console_scripts", name="narrate")
    assert script.load() is cli
    (command,) = arguments("CMD")
    parse_narrate(json.loads(command))
    user = arguments("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can verify runAsNonRoot"
    keywords = [kw for kw, _ in dockerfile()]
    assert "RUN" not in keywords[keywords.index("USER") :], "installs must run before USER"


def test_python_version_and_model_volume() -> None:
    (base,) = arguments("FROM")
    match = re.match(r"python:(\d+\.\d+)", base)
    assert match, f"unexpected base image {base}"
    assert f"{match[1]}.0" in SpecifierSet(metadata("narrate")["Requires-Python"])
    env = env_settings()
    volumes = [v for args in arguments("VOLUME") for v in shlex.split(args)]
    for cache in ("HF_HOME", "AUDIOSEAL_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
        assert any(env[cache].startswith(f"{volume}/") for volume in volumes), cache


def test_the_image_stops_moshi_compiling_mimi_as_it_has_no_c_compiler() -> None:
    # moshi's torch.compile of Mimi needs a C compiler at run time on CUDA; the image has none
    assert env_settings().get("NO_TORCH_COMPILE") == "1"


def test_no_credentials_in_the_image() -> None:
    secretive = re.compile(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|_KEY\b", re.IGNORECASE)
    names = list(env_settings()) + [a.split("=")[0] for a in arguments("ARG")]
    assert not [name for name in names if secretive.search(name)]


# ----------------------------------------------------------------------------- jobs/


def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization() -> dict:
    (document,) = load_yaml(KUSTOMIZATION)
    return document


def resources() -> list[tuple[str, dict]]:
    return [(name, doc) for name in kustomization()["resources"] for doc in load_yaml(JOBS / name)]


def pod_spec(resource: Mapping) -> dict:
    spec = resource["spec"]
    job = spec["jobTemplate"]["spec"] if resource["kind"] == "CronJob" else spec
    return job["template"]["spec"]


def job_spec(resource: Mapping) -> dict:
    return (
        resource["spec"]["jobTemplate"]["spec"]
        if resource["kind"] == "CronJob"
        else resource["spec"]
    )


def workloads() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in resources() if doc["kind"] in ("Job", "CronJob")]


def config_maps() -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: doc["data"] for _, doc in resources() if doc["kind"] == "ConfigMap"
    }


def container_env(container: Mapping) -> dict[str, str]:
    """The environment kubelet gives the container (values from secrets left out)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps()[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def expanded_args(container: Mapping) -> list[str]:
    """`$(VAR)` references replaced as kubelet does; an unknown one stays and fails the test."""
    env = container_env(container)
    return [
        re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)
        for arg in container["args"]
    ]


def test_kustomization_lists_every_manifest_and_nothing_missing() -> None:
    listed = kustomization()["resources"]
    assert all((JOBS / name).is_file() for name in listed)
    manifests = {p.name for p in JOBS.glob("*.yaml")} - {KUSTOMIZATION.name, SPOT_PATCH.name}
    assert manifests == set(listed)
    images = {image["name"] for image in kustomization()["images"]}
    used = {c["image"] for _, doc in workloads() for c in pod_spec(doc)["containers"]}
    assert used <= images, "every container image is set by the kustomization"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    for name, resource in resources():
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{name}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{name}: {error.message}")


def test_the_commented_spot_patch_applies_and_validates() -> None:
    commented = re.search(r"^# patches:\n(?:#.*\n)+", KUSTOMIZATION.read_text(), re.MULTILINE)
    assert commented, "kustomization.yaml shows how to enable the spot patch"
    (patch_entry,) = yaml.safe_load(re.sub(r"^# ?", "", commented[0], flags=re.MULTILINE))[
        "patches"
    ]
    (patch,) = load_yaml(JOBS / patch_entry["path"])
    (target,) = [
        doc
        for _, doc in workloads()
        if doc["kind"] == patch_entry["target"]["kind"] == patch["kind"]
        and doc["metadata"]["name"] == patch_entry["target"]["name"] == patch["metadata"]["name"]
    ]
    patched = merge(copy.deepcopy(target), patch)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)
    spec = pod_spec(patched)
    assert spec["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert spec["nodeSelector"].keys() > pod_spec(target)["nodeSelector"].keys()


def merge(base: dict, patch: Mapping) -> dict:
    """A strategic merge patch as far as this patch needs: maps merge, lists are replaced."""
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def narrate_containers() -> list[tuple[str, dict, dict]]:
    """(manifest, workload, container) of every container that runs the image's `narrate`."""
    return [
        (name, resource, container)
        for name, resource in workloads()
        for container in pod_spec(resource)["containers"]
        if "command" not in container
    ]


def test_narrate_arguments_in_every_manifest_parse() -> None:
    parsed = []
    for name, _, container in narrate_containers():
        args = expanded_args(container)
        assert not [a for a in args if "$(" in a], f"{name}: undefined variable in {args}"
        context = parse_narrate(args)
        parsed.append((name, context.command.name, context.params))
    commands = {(name, command) for name, command, _ in parsed}
    assert {("catalog-job.yaml", "run"), ("nightly-cronjob.yaml", "run")} <= commands
    (nightly,) = [params for name, _, params in parsed if name == "nightly-cronjob.yaml"]
    assert nightly["requests"] and nightly["manifest"] is None


def replaced(resource: dict) -> dict:
    """`resource` after the kustomization's replacements (as far as they go here: a source
    field copied into named list items' fields, the target keeping its string type)."""
    resource = copy.deepcopy(resource)
    for replacement in kustomization().get("replacements", []):
        source = replacement["source"]
        (origin,) = [
            doc
            for _, doc in resources()
            if (doc["kind"], doc["metadata"]["name"]) == (source["kind"], source["name"])
        ]
        value = field(origin, source["fieldPath"])
        for target in replacement["targets"]:
            select = target["select"]
            if (resource["kind"], resource["metadata"]["name"]) != (select["kind"], select["name"]):
                continue
            for path in target["fieldPaths"]:
                *parents, last = path.split(".")
                parent = field(resource, ".".join(parents))
                assert isinstance(parent[last], str), f"{path} is a string in the manifest"
                parent[last] = str(value)
    return resource


def field(document: Any, path: str) -> Any:
    """A kustomize field path: `a.b.[name=x].c`."""
    for part in path.split("."):
        selector = re.fullmatch(r"\[(\w+)=(.+)\]", part)
        if selector:
            (document,) = [item for item in document if item.get(selector[1]) == selector[2]]
        else:
            document = document[part]
    return document


def test_catalog_job_shards_are_its_completions_set_in_one_place() -> None:
    (raw,) = [doc for name, doc in workloads() if name == "catalog-job.yaml"]
    (raw_container,) = pod_spec(raw)["containers"]
    assert not container_env(raw_container)["NARRATE_SHARDS"].isdigit()  # only completions
    job = replaced(raw)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    (container,) = pod_spec(job)["containers"]
    env = container_env(container)
    assert env["NARRATE_SHARDS"] == str(spec["completions"])
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    for index in (0, spec["completions"] - 1):
        shard = Shard.parse(None, {**env, "JOB_COMPLETION_INDEX": str(index)})
        assert (shard.index, shard.count) == (index, spec["completions"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_a_job_applied_without_kustomize_stops_with_a_usage_error_not_a_wrong_shard() -> None:
    (job,) = [doc for name, doc in workloads() if name == "catalog-job.yaml"]
    (container,) = pod_spec(job)["containers"]
    env = {**container_env(container), "JOB_COMPLETION_INDEX": "0"}
    with pytest.raises(UsageError):
        Shard.parse(None, env)


def volumes(resource: Mapping) -> dict[str, dict]:
    return {volume["name"]: volume for volume in pod_spec(resource)["volumes"]}


def test_render_pods_read_the_models_from_the_shared_volume_offline() -> None:
    (claim,) = [doc for _, doc in resources() if doc["kind"] == "PersistentVolumeClaim"]
    name = claim["metadata"]["name"]
    for manifest, resource, container in narrate_containers():
        models = volumes(resource)["models"]
        assert models["persistentVolumeClaim"] == {"claimName": name, "readOnly": True}, manifest
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
        assert mount["readOnly"] and mount["mountPath"] == "/models"
        env = container_env(container)
        assert env["HF_HUB_OFFLINE"] == "1", manifest
        assert "HF_TOKEN" not in {e["name"] for e in container.get("env", [])}, manifest
        assert env["NARRATE_AUDIOSEAL_DIR"].startswith("/models/")


def test_one_job_fills_the_model_volume_and_requires_the_hugging_face_secret() -> None:
    from narrate.post.watermark import DETECTOR_FILE, GENERATOR_FILE
    from narrate.synth.mimi import loaders

    (fill,) = [doc for name, doc in workloads() if name == "models-job.yaml"]
    (container,) = pod_spec(fill)["containers"]
    script = " ".join(container["args"])
    env = container_env(container)
    assert env["HF_HUB_OFFLINE"] == "0"
    for needed in ("sesame/csm-1b", loaders.DEFAULT_REPO, loaders.MIMI_NAME):
        assert needed in script
    assert GENERATOR_FILE in script and DETECTOR_FILE in script
    assert "$NARRATE_AUDIOSEAL_DIR" in script  # where `narrate run` reads them
    (token,) = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"].get("optional", False) is False
    claim = volumes(fill)["models"]["persistentVolumeClaim"]
    assert not claim.get("readOnly")
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    assert not mount.get("readOnly")


def test_every_container_requests_and_limits_the_ephemeral_storage_of_its_scratch() -> None:
    for name, resource in workloads():
        scratch = [v for v in volumes(resource).values() if "emptyDir" in v]
        for container in pod_spec(resource)["containers"]:
            resources_ = container["resources"]
            requested = resources_["requests"]["ephemeral-storage"]
            assert resources_["limits"]["ephemeral-storage"] == requested, name
            sizes = sum(gibibytes(v["emptyDir"]["sizeLimit"]) for v in scratch)
            assert gibibytes(requested) > sizes, name


def gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Gi|Mi)", quantity).groups()
    return int(number) / (1024 if unit == "Mi" else 1)


def test_the_site_gets_a_compressed_format() -> None:
    assert config_maps()["narrate-config"]["NARRATE_FORMAT"] in ("mp3", "opus")


def test_failure_policies_act_on_narrate_exit_codes() -> None:
    """Usage errors fail at once, interruptions and disruptions retry for free, others count."""
    for name, resource in workloads():
        spec = job_spec(resource)
        if "podFailurePolicy" not in spec:
            continue
        assert pod_spec(resource)["restartPolicy"] == "Never", name

        def action_for(exit_code: int, conditions: tuple[str, ...] = (), rules=spec) -> str:
            for rule in rules["podFailurePolicy"]["rules"]:
                on_codes = rule.get("onExitCodes")
                if on_codes and exit_code in on_codes["values"]:
                    return rule["action"]
                on_conditions = rule.get("onPodConditions", [])
                if any(c["type"] in conditions for c in on_conditions):
                    return rule["action"]
            return "Count"

        fail = "FailIndex" if "backoffLimitPerIndex" in spec else "FailJob"
        assert action_for(EXIT_USAGE) == fail, name
        assert action_for(EXIT_INTERRUPTED) == "Ignore", name
        assert action_for(EXIT_USAGE, ("DisruptionTarget",)) == "Ignore", name
        assert action_for(1) == action_for(3) == "Count", name


def test_pods_get_more_grace_than_narrate_needs_to_stop() -> None:
    from narrate.run import STOP_BUDGET_S

    needed = STOP_BUDGET_S + 2  # the stop budget ends with the last database flush; + exit
    for name, resource in workloads():
        if job_spec(resource).get("podFailurePolicy"):
            assert pod_spec(resource)["terminationGracePeriodSeconds"] >= needed, name


def test_nightly_queue_schedule() -> None:
    (cron,) = [doc for name, doc in workloads() if doc["kind"] == "CronJob"]
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] and spec["startingDeadlineSeconds"] > 0


# ----------------------------------------------------------------------------- make demo


@pytest.mark.parametrize("target", ["demo", "demo-csm"])
def test_demo_targets_run_narrate_with_valid_arguments(target: str) -> None:
    dry_run = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True
    ).stdout
    (line,) = [line for line in dry_run.splitlines() if "bin/narrate run" in line]
    argv = shlex.split(line)
    context = parse_narrate(
        argv[argv.index(next(a for a in argv if a.endswith("bin/narrate"))) + 1 :]
    )
    assert (ROOT / context.params["manifest"]).is_file()
    assert context.params["no_watermark"], "the demo cannot fetch AudioSeal weights"
    assert context.params["engine"] == ("preview" if target == "demo" else "csm")
