"""`dc_pool`: DC's synthesis recipe with Teddy's cached pool in place of DC's networks (issue 32
item 3, docs/method.md section 8). Everything DC's loop fixes stays: the matching network
(`matching_arch`, DC's ConvNet-3-128 with instance norm), DC's layer distance summed over
classes (`dc.dc_match`), SGD on the images (`lr` 0.1, `momentum` 0.5), `iterations` (1000) with
`outer_loop` matching steps each (DC's get_loops per IPC), `batch_real` (256) real images per
class and noise initialisation. What changes is where the networks come from:

- DC draws a new randomly initialised network every iteration, computes the real gradient of a
  new real batch at it, and trains it on the synthetic set between matching steps.
- Here a pool of `pool_size` networks is built once, before the loop, and the real gradient of
  every (member, class) is computed once from `batch_real` real images (`teddy.class_gradients`
  and `teddy.real_gradients`, the gradient form's cache). Each matching step draws a member
  uniformly and only the synthetic images pass through it; nothing is trained in the loop.

`pool_kind` says what the members are: `random`, randomly initialised networks (DC's own
models at IPC 1, where DC never trains its network: the pure cost claim), or `prior`, each
network trained `prior_steps` SGD steps on real batches of 256 from its own seed (lr `lr_net`,
momentum `net_momentum`, DC's network optimiser): early snapshots of the matching architecture.
A post pool (pruned trained models) is not built here. The pool, its gradients and the loop are
all in the job's distillation time.

The pool comes from its own generator (seeded from the run's seed), so a resumed job rebuilds
the same pool; the loop's generator (member draws) and the images are checkpointed every
`checkpoint_every` iterations.
"""

from __future__ import annotations

import hashlib
import time

import torch

from teddy.errors import TeddyError
from teddy.methods.base import Distilled, DistillTask, real_indices_per_class
from teddy.methods.dc import RECIPE_KEYS as DC_KEYS, dc_loops, dc_match, matching_network, start_synthetic
from teddy.methods.registry import register_method
from teddy.methods.teddy import class_gradients, real_gradients
from teddy.models import build_model
from teddy.pool import FreshModelPool, WeakPool

POOL_KINDS = ("random", "prior")

RECIPE_KEYS = {
    **{k: DC_KEYS[k] for k in ("iterations", "lr", "init", "momentum", "lr_net", "net_momentum", "batch_real",
                               "outer_loop", "matching_arch", "matching_arch_options")},
    "pool_kind": {"enum": list(POOL_KINDS), "description": "dc_pool: random (initialised networks) or prior (trained prior_steps steps on real data)"},
    "pool_size": {"type": "integer", "minimum": 1, "description": "dc_pool: networks in the pool, built once per job"},
    "prior_steps": {"type": "integer", "minimum": 1, "description": "dc_pool: SGD steps on real batches of 256 for each prior member"},
}


def pool_seed(seed: int) -> int:
    """The pool's own seed: a function of the run's seed, apart from the loop's generator."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}/dc_pool/pool".encode()).digest()[:8], "little") & (2 ** 63 - 1)


def build_matching_pool(task: DistillTask, recipe: dict, generator: torch.Generator) -> WeakPool:
    """`pool_size` matching networks: randomly initialised, or each trained `prior_steps` steps."""
    kind, size = recipe["pool_kind"], int(recipe["pool_size"])
    if kind not in POOL_KINDS:
        raise TeddyError(f"unknown pool_kind '{kind}' (recipe key pool_kind: {', '.join(POOL_KINDS)})")
    if size < 1:
        raise TeddyError(f"pool_size must be >= 1, got {size} (recipe key pool_size)")
    if kind == "random":
        members = [matching_network(task, recipe, generator) for _ in range(size)]
    else:
        def build():
            return build_model(recipe["matching_arch"], num_classes=task.info.num_classes,
                               in_channels=task.info.channels, image_size=task.info.image_size,
                               **(recipe["matching_arch_options"] or {}))
        training = {"optimizer": "sgd", "lr": float(recipe["lr_net"]), "momentum": float(recipe["net_momentum"]),
                    "batch_size": 256}
        trainer = FreshModelPool(build, task.real, training, steps=int(recipe["prior_steps"]), device=task.device)
        members = [trainer.sample(i, generator) for i in range(size)]
    return WeakPool(members, [f"{kind}{i}" for i in range(size)]).to(task.device)


def dc_pool_work(recipe: dict, ipc: int, classes: int) -> float:
    """Image passes of one iteration: the synthetic images through forward and second-order
    backward (about 3 passes) at each matching step; the real gradients are cached."""
    outer, _ = dc_loops(ipc, recipe.get("outer_loop"), 0)
    return outer * classes * 3 * ipc


@register_method("dc_pool", recipe_keys=RECIPE_KEYS, per_batch=False, work=dc_pool_work, defaults={
    "iterations": 1000, "lr": 0.1, "momentum": 0.5, "lr_net": 0.01, "net_momentum": 0.5, "batch_real": 256,
    "init": "noise", "outer_loop": None, "matching_arch": "convnet",
    "matching_arch_options": {"depth": 3, "width": 128, "norm": "instance", "mnist_padding": True},
    "pool_kind": "random", "pool_size": 16, "prior_steps": 100, "log_every": 10, "checkpoint_every": 100})
def distill(task: DistillTask) -> Distilled:
    r = task.recipe
    per_class = real_indices_per_class(task)
    classes, ipc, device = task.info.num_classes, int(task.ipc), task.device
    outer_loop, _ = dc_loops(ipc, r["outer_loop"], 0)
    iterations = int(r["iterations"])
    run = start_synthetic(task, per_class, "dc_pool")  # checks init before the pool is built
    images, optimizer, generator = run.images, run.optimizer, run.generator
    began = time.perf_counter()  # the pool has its own generator: built after the images, it is the same pool
    pool_generator = torch.Generator().manual_seed(pool_seed(task.seed))
    pool = build_matching_pool(task, r, pool_generator)
    cache = real_gradients(pool, task.real, classes, int(r["batch_real"]), pool_generator, device)["grads"]
    pool_seconds = time.perf_counter() - began
    loop_began = time.perf_counter()
    for it in run.progress(iterations, f"dc_pool ipc{ipc}"):
        total = 0.0
        for step in range(outer_loop):
            member = pool.index(it, generator)
            model = pool.members[member]
            loss = images.new_zeros(())
            for c in range(classes):
                rows = slice(c * ipc, (c + 1) * ipc)
                loss = loss + dc_match(class_gradients(model, images[rows], c, create_graph=True), cache[member][c])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.checkpoint.check_finite(loss.detach(), "dc_pool", f"iteration {it + 1}, outer step {step + 1}")
            total += float(loss.detach())
        run.end_iteration(it, iterations, total / (classes * outer_loop), loop_began)
    loop_seconds = run.elapsed + time.perf_counter() - loop_began
    return Distilled(images.detach().cpu(), run.labels.cpu(),
                     {"history": run.history, "seconds": pool_seconds + loop_seconds, "pool_seconds": pool_seconds,
                      "loop_seconds": loop_seconds, "outer_loop": outer_loop, "pool": list(pool.names)})
