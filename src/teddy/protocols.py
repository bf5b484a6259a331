"""Evaluation protocols as data: a protocol is a named, complete student recipe, one YAML file
per protocol under config/protocols/ (or the config's `protocols_dir`), validated against
`definitions/protocol` of workflow/schemas/config.schema.yaml, each citing the paper and the
repository files its values were read in.

A table block is one (student, protocol) pair; published figures are printed only in the block
of the protocol their source used (teddy.published, teddy.report). This module answers what a
cell of the evaluation grid trains: which students a protocol evaluates and with which options
(`cells`, `student_spec`), the recipe at a given IPC (`cell_recipe`: RDED's batch per IPC) and
on the whole training set (`whole_set_recipe`: the ceiling rows)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from teddy.errors import TeddyError
from teddy.models import MODELS, arch_spec, check_image_size
from teddy.schema import key_path, read_schema, validator_filling_defaults

PROTOCOLS_DIR = Path(__file__).resolve().parents[2] / "config" / "protocols"


def protocols_dir(cfg: dict | None = None) -> Path:
    return Path((cfg or {}).get("protocols_dir") or PROTOCOLS_DIR)


def known_protocols(folder=PROTOCOLS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def _read(path: str, version: tuple) -> dict:
    """One protocol file, validated with the schema's defaults filled in (cached per version)."""
    try:
        protocol = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TeddyError(f"unreadable protocol file {path}: {exc}") from None
    if not isinstance(protocol, dict):
        raise TeddyError(f"protocol file {path}: expected a mapping of keys, got {type(protocol).__name__}")
    schema = read_schema()
    validator = validator_filling_defaults({"$ref": "#/definitions/protocol", "definitions": schema["definitions"]})
    errors = sorted(validator.iter_errors(protocol), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise TeddyError(f"protocol file {path}: key {key_path(e.absolute_path)}: {e.message}")
    if protocol["name"] != Path(path).stem:
        raise TeddyError(f"protocol file {path}: key name is '{protocol['name']}', expected the file's stem "
                         f"'{Path(path).stem}'")
    kl = protocol["recipe"].get("kd_loss", "kl") == "kl"
    if protocol["labels"] == "kd" and kl and "temperature" not in protocol["recipe"]:
        raise TeddyError(f"protocol file {path}: key recipe.temperature is required for labels: kd")
    if protocol["labels"] == "hard" and protocol["teachers"]:
        raise TeddyError(f"protocol file {path}: key teachers needs labels: kd")
    return protocol


def named_protocols_dir(folder=PROTOCOLS_DIR) -> Path:
    """Where the peers' protocols we name but ship no recipe for lie: `named/` of the protocols
    folder, else the repository's (a folder of your own recipes still knows the peers' names)."""
    own = Path(folder) / "named"
    return own if own.is_dir() else PROTOCOLS_DIR / "named"


@functools.lru_cache(maxsize=None)
def _read_named(path: str, version: tuple) -> dict:
    try:
        entry = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TeddyError(f"unreadable protocol file {path}: {exc}") from None
    schema = read_schema()
    validator = validator_filling_defaults({"$ref": "#/definitions/named_protocol", "definitions": schema["definitions"]})
    errors = sorted(validator.iter_errors(entry), key=lambda e: list(e.absolute_path))
    if errors:
        raise TeddyError(f"protocol file {path}: key {key_path(errors[0].absolute_path)}: {errors[0].message}")
    if entry["name"] != Path(path).stem:
        raise TeddyError(f"protocol file {path}: key name is '{entry['name']}', expected the file's stem")
    return entry


def named_protocols(folder=PROTOCOLS_DIR) -> dict[str, dict]:
    """The peers' protocols published figures carry but we do not run (config/protocols/named/)."""
    out = {}
    for path in sorted(named_protocols_dir(folder).glob("*.yaml")):
        stat = path.stat()
        out[path.stem] = copy.deepcopy(_read_named(str(path), (stat.st_mtime_ns, stat.st_size)))
    return out


def closest_protocols(folder=PROTOCOLS_DIR) -> dict[str, list[str]]:
    """Per protocol name (ours and the peers' named ones), its `closest` list: the protocols nearest
    to it, in order of preference, as its file states them."""
    out = {name: list(entry["closest"]) for name, entry in named_protocols(folder).items()}
    for name in known_protocols(folder):
        out[name] = list(load_protocol(name, folder)["closest"])
    return out


def load_protocol(name: str, folder=PROTOCOLS_DIR) -> dict:
    """The protocol `name` (a deep copy: callers may change it)."""
    path = Path(folder) / f"{name}.yaml"
    if not path.is_file():
        known = known_protocols(folder)
        raise TeddyError(f"unknown evaluation protocol '{name}' (config key evaluate.protocols); known: "
                         f"{', '.join(known) or f'none in {folder}'}")
    stat = path.stat()
    return copy.deepcopy(_read(str(path), (stat.st_mtime_ns, stat.st_size)))


def config_protocols(cfg: dict) -> dict[str, dict]:
    """Every protocol evaluate.protocols names, by name, in the config's order."""
    folder = protocols_dir(cfg)
    return {name: load_protocol(name, folder) for name in cfg["evaluate"]["protocols"]}


def config_protocol(cfg: dict, name: str | None = None) -> dict:
    """The protocol `name`, or the first of evaluate.protocols without one (a copy: benchmarks
    change its recipe)."""
    return load_protocol(name or cfg["evaluate"]["protocols"][0], protocols_dir(cfg))


def evaluates(protocol: dict, arch: str) -> bool:
    return protocol["students"] == "any" or arch in protocol["students"]


def cells(cfg: dict) -> list[tuple[str, str]]:
    """The (student, protocol) pairs of the evaluation grid: each of evaluate.students under each
    protocol that evaluates it, in the config's order."""
    protocols = config_protocols(cfg)
    return [(arch, name) for name, p in protocols.items() for arch in cfg["evaluate"]["students"]
            if evaluates(p, arch)]


def student_spec(cfg: dict, protocol: dict, arch: str) -> dict:
    """What model_from_spec builds: the protocol's variant of `arch`, or the config's arch_options
    for a protocol that takes any student."""
    if protocol["students"] == "any":
        return {"arch": arch, **(cfg.get("arch_options") or {}).get(arch, {})}
    return {"arch": arch, **protocol["students"][arch]}


def cell_recipe(protocol: dict, ipc: int) -> dict:
    """The student recipe of one (protocol, IPC) cell: recipe.batch_size, or batch_size_by_ipc at
    the largest key <= ipc. The batch doubles on many classes and is capped at the set's size
    when the job runs (`class_batch_size`)."""
    recipe = copy.deepcopy(protocol["recipe"])
    by_ipc = {int(k): int(v) for k, v in (protocol.get("batch_size_by_ipc") or {}).items()}
    keys = [k for k in sorted(by_ipc) if k <= int(ipc)]
    if keys:
        recipe["batch_size"] = by_ipc[keys[-1]]
    if by_ipc and protocol.get("batch_size_doubled_from_classes"):
        recipe["batch_size_doubled_from_classes"] = int(protocol["batch_size_doubled_from_classes"])
    return recipe


def class_batch_size(recipe: dict, num_images: int, num_classes: int) -> int:
    """A cell recipe's batch on a set of `num_images` images of `num_classes` classes: doubled
    from batch_size_doubled_from_classes classes (RDED), never above the set."""
    batch = int(recipe["batch_size"])
    doubled_from = recipe.get("batch_size_doubled_from_classes")
    if doubled_from and int(num_classes) >= int(doubled_from):
        batch *= 2
    return min(batch, int(num_images))


def whole_set_recipe(protocol: dict, epochs: int | None = None) -> dict:
    """The protocol's recipe on the whole training set (the ceiling rows): `epochs` (config
    ceiling.epochs) replaces the recipe's, and step milestones and warm-up scale in proportion;
    no shuffle_patches (real images are not patch mosaics)."""
    recipe = copy.deepcopy(protocol["recipe"])
    if (recipe.get("augment") or {}).get("shuffle_patches"):
        # RDED shuffles the patches of its synthetic mosaics; a real image is not one
        recipe["augment"].pop("shuffle_patches")
    if epochs is None or int(epochs) == int(recipe["epochs"]):
        return recipe
    ratio = int(epochs) / int(recipe["epochs"])
    recipe["epochs"] = int(epochs)
    if recipe.get("milestones"):
        recipe["milestones"] = sorted({max(1, round(int(m) * ratio)) for m in recipe["milestones"]})
    if recipe.get("warmup_epochs"):
        recipe["warmup_epochs"] = max(1, round(int(recipe["warmup_epochs"]) * ratio))
    return recipe


def teacher_archs(protocol: dict, base_arch: str) -> list[str]:
    """The architectures of a kd protocol's teachers (rule train_base's models): its `teachers`,
    else the base model's; none for hard labels."""
    if protocol["labels"] != "kd":
        return []
    return list(protocol["teachers"]["archs"]) if protocol.get("teachers") else [base_arch]


def _check_takes_images(spec: dict, image_size: int, where: str) -> None:
    """check_image_size for a model spec (arch + options), its error prefixed with `where`."""
    options = {k: v for k, v in spec.items() if k != "arch"}
    try:
        check_image_size(spec["arch"], image_size, **options)
    except TeddyError as exc:
        raise TeddyError(f"{where}: {exc}") from None


def check_protocols(cfg: dict, image_size: int) -> None:
    """At config load: every protocol exists and is valid, every student has a protocol that
    evaluates it and every protocol a student, each variant takes the dataset's images, and an
    ensemble's teachers are registered, fit the images and can be made from base.weights."""
    protocols = config_protocols(cfg)
    students = list(cfg["evaluate"]["students"])
    base = cfg["base"]
    for name, protocol in protocols.items():
        for arch in teacher_archs(protocol, base["arch"]):
            if arch == base["arch"]:
                continue
            if arch not in MODELS:
                raise TeddyError(f"protocol '{name}': teacher architecture '{arch}' (key teachers.archs) is not "
                                 f"registered; registered: {sorted(MODELS)}")
            _check_takes_images(arch_spec(cfg, arch), image_size, f"protocol '{name}' teacher")
            if base.get("weights") not in (None, "torchvision"):
                raise TeddyError(f"protocol '{name}' has teacher '{arch}', but base.weights is a file for "
                                 f"'{base['arch']}' only: use base.weights torchvision, or train (no base.weights)")
        if protocol["students"] != "any":
            for arch in protocol["students"]:
                if arch not in MODELS:
                    raise TeddyError(f"protocol '{name}' names architecture '{arch}', which is not registered; "
                                     f"registered: {sorted(MODELS)}")
            if not any(evaluates(protocol, a) for a in students):
                raise TeddyError(f"protocol '{name}' evaluates {sorted(protocol['students'])}, but evaluate.students "
                                 f"is {students}: add one of them, or drop the protocol")
        for arch in students:
            if evaluates(protocol, arch):
                _check_takes_images(student_spec(cfg, protocol, arch), image_size, f"protocol '{name}'")
    for arch in students:
        if not any(evaluates(p, arch) for p in protocols.values()):
            raise TeddyError(f"evaluate.students has '{arch}', which none of evaluate.protocols "
                             f"({', '.join(protocols)}) evaluates")
