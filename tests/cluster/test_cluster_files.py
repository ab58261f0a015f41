"""cluster/: every YAML parses, every entrypoint runs a real module with real flags and configs,
and the image / node set-up installs extras that pyproject.toml defines (never tensorrt by default).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli, tomllib's origin
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
YAMLS = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
# Paths an entrypoint may name that live on user-mounted storage, not in the repo.
USER_MOUNTED = ("/shared/", "/data/", "/mnt/")
# Where the image holds the repository (cluster/Dockerfile's WORKDIR): a RayJob's driver does not
# choose its working directory, so its entrypoint names configs by their absolute path there.
IMAGE_REPO = "/app/"


def _in_repo(path: str) -> Path:
    """A path an entrypoint names, as the repository file it stands for."""
    return REPO / (path[len(IMAGE_REPO):] if path.startswith(IMAGE_REPO) else path)


def _docs(p: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(p.read_text()) if d is not None]


def _extras() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(meta["project"]["optional-dependencies"])


def _k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAMLS if "k8s" in p.parts for d in _docs(p)]


def _rayjobs() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in _k8s_docs() if d["kind"] == "RayJob"]


def check_command(cmd: str, where: str) -> str:
    """Parse ``python -m tsal_dist.X ...`` with the module's own argparse; check named files.

    Returns the module name. Raises AssertionError naming ``where`` otherwise.
    """
    argv = shlex.split(cmd)
    assert argv[:2] == ["python", "-m"], f"{where}: entrypoint must be `python -m ...`: {cmd}"
    module = argv[2]
    assert module in ("tsal_dist.train", "tsal_dist.tune"), f"{where}: unexpected module {module}"
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{where}: {module} missing"
    if module == "tsal_dist.train":
        from tsal_dist.train import parse_args
    else:
        from tsal_dist.tune import parse_args
    try:
        args = parse_args(argv[3:])
    except SystemExit as e:  # argparse rejects unknown flags with exit 2
        raise AssertionError(f"{where}: {module} rejects its arguments: {cmd}") from e
    from tsal_dist.config import parse_set_args

    overrides = parse_set_args(args.set)
    if args.config:
        if args.config.startswith(USER_MOUNTED):
            return module
        path = _in_repo(args.config)
        assert path.is_file(), f"{where}: --config {args.config} is not in the repo"
        if module == "tsal_dist.train":
            from tsal_dist.config import load_config

            load_config(path, overrides)
        else:
            from tsal_dist.distributed.sweep import load_sweep

            load_sweep(path, overrides)
    for value in (args.output,):
        if value:
            assert value.startswith(USER_MOUNTED), f"{where}: output {value} not on shared storage"
    return module


def test_every_yaml_parses():
    names = {p.relative_to(CLUSTER).as_posix() for p in YAMLS}
    assert {"aws-gpu.yaml", "runtime_env.yaml", "k8s/raycluster.yaml", "k8s/rayjob-train.yaml",
            "k8s/rayjob-tune.yaml", "k8s/storage.yaml"} <= names
    for p in YAMLS:
        docs = _docs(p)
        assert docs and all(isinstance(d, dict) for d in docs), p


def test_k8s_manifests_are_well_formed():
    kinds = [d["kind"] for _, d in _k8s_docs()]
    assert {"RayCluster", "RayJob", "PersistentVolumeClaim"} <= set(kinds)
    for p, d in _k8s_docs():
        assert d.get("apiVersion") and d.get("metadata", {}).get("name"), p
        if d["kind"] in ("RayCluster", "RayJob"):
            assert d["apiVersion"] == "ray.io/v1", p


def _cluster_specs() -> list[tuple[str, dict]]:
    out = []
    for p, d in _k8s_docs():
        if d["kind"] == "RayCluster":
            out.append((f"{p.name}:{d['metadata']['name']}", d["spec"]))
        elif d["kind"] == "RayJob" and "rayClusterSpec" in d["spec"]:
            out.append((f"{p.name}:{d['metadata']['name']}", d["spec"]["rayClusterSpec"]))
    return out


def test_ray_clusters_gpu_workers_cpu_head_shared_pvc():
    pvcs = {d["metadata"]["name"] for _, d in _k8s_docs() if d["kind"] == "PersistentVolumeClaim"}
    for pvc in pvcs:
        claim = next(d for _, d in _k8s_docs() if d["metadata"]["name"] == pvc)
        assert "ReadWriteMany" in claim["spec"]["accessModes"]
    specs = _cluster_specs()
    assert len(specs) >= 2
    for where, spec in specs:
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-gpus") == "0", where
        head_c = head["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head_c["resources"].get("limits", {}), where
        pods = [head["template"]["spec"]] + [g["template"]["spec"]
                                            for g in spec["workerGroupSpecs"]]
        for g in spec["workerGroupSpecs"]:
            c = g["template"]["spec"]["containers"][0]
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, where
        for pod in pods:
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                      if "persistentVolumeClaim" in v}
            assert claims and claims <= pvcs, where
            mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            assert "/shared" in mounts, where


def test_rayjob_entrypoints_run_real_modules():
    modules = {check_command(d["spec"]["entrypoint"], f"{p.name}:{d['metadata']['name']}")
               for p, d in _rayjobs()}
    assert modules == {"tsal_dist.train", "tsal_dist.tune"}


def test_rayjob_configs_are_absolute_paths_in_the_image():
    assert re.search(rf"^WORKDIR {IMAGE_REPO.rstrip('/')}$", (CLUSTER / "Dockerfile").read_text(),
                     re.M)
    for p, d in _rayjobs():
        argv = shlex.split(d["spec"]["entrypoint"])
        config = argv[argv.index("--config") + 1]
        assert config.startswith(IMAGE_REPO), f"{p.name}: --config {config} depends on the cwd"


def test_rayjob_tune_targets_the_raycluster():
    cluster_names = {d["metadata"]["name"] for _, d in _k8s_docs() if d["kind"] == "RayCluster"}
    for p, d in _rayjobs():
        sel = d["spec"].get("clusterSelector")
        if sel:
            assert sel["ray.io/cluster"] in cluster_names, p


def test_training_recipe_output_is_shared_storage():
    """The entrypoints' configs write run folders to the shared mount (run.output)."""
    from tsal_dist.config import load_config

    for p, d in _rayjobs():
        argv = shlex.split(d["spec"]["entrypoint"])
        if argv[2] == "tsal_dist.train":
            from tsal_dist.train import parse_args

            a = parse_args(argv[3:])
            cfg = load_config(_in_repo(a.config))
            out = a.output or cfg.run.output
            assert out.startswith(USER_MOUNTED), p
            assert cfg.scaling.use_gpu


def _pip_installs(text: str) -> list[str]:
    """Every ``pip install ...`` command in a shell-ish text (continuations joined)."""
    text = text.replace("\\\n", " ")
    return re.findall(r"pip install[^\n;&|]*", text)


def _extras_in(cmd: str) -> set[str]:
    found: set[str] = set()
    for group in re.findall(r"\[([a-z0-9_,\s-]+)\]", cmd):
        found |= {x.strip() for x in group.split(",") if x.strip()}
    return found


def test_dockerfile_installs_real_extras_and_pins_torch():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM .*\$\{CUDA_IMAGE\}", text, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:", text, re.M)
    installs = _pip_installs(text)
    editable = [c for c in installs if "-e " in c]
    assert editable, "the image must pip install -e the package"
    assert _extras_in(editable[0]) == {"train", "video", "runtime"}
    for c in editable:
        assert _extras_in(c) <= _extras(), c
    # torch and ray pinned for every pip call after torch's own install, before the package; pip
    # refuses to run while PIP_CONSTRAINT names a file that does not exist yet
    written = re.search(r"^ && printf 'torch==%s\\nray==%s\\n' \"\$\{TORCH_VERSION\}\" "
                        r"\"\$\{RAY_VERSION\}\" > (\S+)", text, re.M)
    assert written, "the image must write torch's and ray's pins to a constraints file"
    set_at = [m.start() for m in re.finditer(r"PIP_CONSTRAINT=", text)]
    assert set_at == [text.index(f"ENV PIP_CONSTRAINT={written.group(1)}") + 4], set_at
    assert written.end() < set_at[0] < text.index('pip install -e ".[train')
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1)
    k8s = {d["spec"].get("rayClusterSpec", d["spec"])["rayVersion"] for _, d in _k8s_docs()
           if d["kind"] in ("RayCluster", "RayJob") and "clusterSelector" not in d["spec"]}
    assert k8s == {ray_version}, (k8s, ray_version)
    setup = "\n".join(_docs(CLUSTER / "aws-gpu.yaml")[0]["setup_commands"])
    assert f"ray=={ray_version}" in setup
    # TensorRT only behind the optional build arg
    for line in text.splitlines():
        if "tensorrt" in line and "pip install" in line:
            assert "WITH_TENSORRT" in text[:text.index(line)].splitlines()[-1] + line, line
    assert "ARG WITH_TENSORRT=0" in text
    for path in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / path).exists(), f"Dockerfile copies missing {path}"


def test_launcher_yaml_gpu_workers_and_setup():
    cfg = _docs(CLUSTER / "aws-gpu.yaml")[0]
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert gpu and all(t["node_config"]["InstanceType"].startswith("g5.") for t in gpu)
    setup = "\n".join(cfg["setup_commands"])
    installs = _pip_installs(setup)
    pkg = [c for c in installs if "tsal_dist[" in c]
    assert pkg and _extras_in(pkg[0]) == {"train", "video", "runtime"} <= _extras()
    assert "torch==2.13.0" in setup and "PIP_CONSTRAINT" in setup
    assert "/shared" in setup
    assert cfg["file_mounts"] == {"~/tsal_dist": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    # an explicit AMI on every node: Ray's default is an Ubuntu 18.04 image torch cannot install on
    assert all(re.fullmatch(r"ami-[0-9a-f]{8,17}", t["node_config"].get("ImageId", ""))
               for t in types.values())
    # the autoscaler (on the head) needs boto3, which ray[default] does not bring
    assert any("boto3" in c for c in _pip_installs("\n".join(cfg["head_setup_commands"])))
    # the SSH user, who runs the jobs, owns every folder the docs write to (a new EFS is root's)
    for folder in ("/shared", "/shared/runs", "/shared/sweeps", "/shared/data/lists"):
        assert re.search(rf"chown ubuntu:ubuntu[^&;]* {folder}( |$)", setup), folder
    assert "chown -R" not in setup


def test_launcher_yaml_passes_rays_own_schema():
    jsonschema = pytest.importorskip("jsonschema")
    ray = pytest.importorskip("ray")
    import json

    schema = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())
    jsonschema.validate(_docs(CLUSTER / "aws-gpu.yaml")[0], schema)


def test_runtime_env_is_a_valid_ray_runtime_env():
    env = _docs(CLUSTER / "runtime_env.yaml")[0]
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "conda",
                        "container", "config"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert ".venv" in env["excludes"]
    for _, d in _rayjobs():
        inner = yaml.safe_load(d["spec"]["runtimeEnvYAML"])
        assert all(isinstance(v, str) for v in inner["env_vars"].values())


def _readme_commands() -> list[str]:
    text = (CLUSTER / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)
    cmds = []
    for b in blocks:
        b = b.replace("\\\n", " ")
        for m in re.finditer(r"python -m tsal_dist\.[a-z_]+[^\n#]*", b):
            cmds.append(m.group(0).strip().rstrip("'\""))
    return cmds


def test_readme_commands_use_real_modules_and_files():
    cmds = _readme_commands()
    assert any("tsal_dist.train" in c for c in cmds) and any("tsal_dist.tune" in c for c in cmds)
    for c in cmds:
        check_command(c, "cluster/README.md")
    text = (CLUSTER / "README.md").read_text()
    for rel in re.findall(r"cluster/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile", text):
        assert (REPO / rel).exists(), f"cluster/README.md names missing {rel}"


@pytest.mark.parametrize("bad", [
    "python -m tsal_dist.trian --config configs/smoke.yaml",
    "python -m tsal_dist.train --config configs/nope.yaml",
    "python -m tsal_dist.train --confg configs/smoke.yaml",
    "python -m tsal_dist.tune --config configs/sweeps/nope.yaml",
])
def test_check_command_rejects_bad_entrypoints(bad):
    with pytest.raises(AssertionError):
        check_command(bad, "test")


def test_every_cluster_requires_a_token_and_keeps_the_dashboard_private():
    """Ray 2.60's `ray start --head` turns tokens on only when asked or when ~/.ray/auth_token
    happens to exist: every file must ask, and no dashboard (which runs code for whoever reaches
    it) listens on a public address."""
    aws = _docs(CLUSTER / "aws-gpu.yaml")[0]
    for cmds in (aws["head_start_ray_commands"], aws["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), start
    head = " ".join(aws["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    for p, d in _k8s_docs():
        spec = d["spec"].get("rayClusterSpec", d["spec"]) if d["kind"] in ("RayCluster",
                                                                             "RayJob") else None
        if spec is None or d["kind"] == "RayJob" and "clusterSelector" in d["spec"]:
            continue
        assert spec.get("authOptions") == {"mode": "token"}, p
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", p
