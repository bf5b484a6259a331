"""`dc`: Dataset Condensation with gradient matching (Zhao, Mopuri and Bilen, ICLR 2021), the
synthesis loop as DC's own code runs it (VICO-UoE/DatasetCondensation `main.py` and `utils.py`,
read at commit 0061269c; docs/method.md section 8). It is the distillation-side reference:
teddy's gradient form replaces the networks this loop trains by a pool cached once.

Every outer iteration draws a new randomly initialised matching network (`matching_arch`,
default DC's ConvNet-3-128 with instance norm), in train mode, with its own SGD (`lr_net`,
momentum `net_momentum`). Then `outer_loop` times: for every class, the CE gradient of
`batch_real` random real images of the class and that of the class's synthetic images; the loss
is the sum over classes of DC's layer distance (`dc_layer_distance`); one SGD step on the images
(`lr`, momentum `momentum`, the optimiser kept across iterations); and, except after the last
step, `inner_loop` epochs of training the network on the synthetic set (batches of
`batch_train`, shuffled). The loop counts default to DC's `get_loops` per IPC (`dc_loops`).
Images live in the normalised pixel space unclipped, as in DC; the set is then stored as 8-bit
PNGs like every set here (clipped to the valid range).

Randomness comes from one generator seeded by the run's seed (real batches, network seeds,
shuffles), so a run resumed from its checkpoint (`checkpoint_every` iterations) reproduces the
uninterrupted one. Not implemented: DSA's siamese augmentation inside the loop.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from teddy.data import stack_items
from teddy.errors import TeddyError
from teddy.methods.base import Distilled, DistillTask, real_indices_per_class
from teddy.methods.registry import register_method
from teddy.models import build_model
from teddy.resume import Resumable

# DC's get_loops: IPC -> (outer_loop, inner_loop)
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int, outer_loop: int | None = None, inner_loop: int | None = None) -> tuple[int, int]:
    """(outer_loop, inner_loop): the recipe's, else DC's values for this IPC."""
    if outer_loop is not None and inner_loop is not None:
        return int(outer_loop), int(inner_loop)
    if ipc not in DC_LOOPS:
        raise TeddyError(f"DC defines its loop counts for IPC {sorted(DC_LOOPS)}, not {ipc}: set recipe keys "
                         f"outer_loop and inner_loop")
    default = DC_LOOPS[ipc]
    return (int(outer_loop) if outer_loop is not None else default[0],
            int(inner_loop) if inner_loop is not None else default[1])


def dc_layer_distance(synthetic: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """DC's distance of two gradients of one parameter tensor: reshaped to (output units, rest),
    the sum over units of 1 - <s, r> / (|s| |r| + 1e-6); a 1-d tensor (bias, normalisation)
    counts zero."""
    if synthetic.ndim == 1:
        return synthetic.new_zeros(())
    s, r = synthetic.reshape(synthetic.shape[0], -1), real.reshape(real.shape[0], -1)
    return (1 - (s * r).sum(-1) / (s.norm(dim=-1) * r.norm(dim=-1) + 1e-6)).sum()


def dc_match(synthetic_grads, real_grads) -> torch.Tensor:
    """DC's matching loss: the layer distance summed over the parameter tensors."""
    return sum(dc_layer_distance(s, r) for s, r in zip(synthetic_grads, real_grads))


def matching_network(task: DistillTask, recipe: dict, generator: torch.Generator) -> torch.nn.Module:
    """A randomly initialised `matching_arch` (its seed drawn from `generator`), in train mode."""
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):  # the network's initialisation is a function of the generator
        torch.manual_seed(seed)
        model = build_model(recipe["matching_arch"], num_classes=task.info.num_classes,
                            in_channels=task.info.channels, image_size=task.info.image_size,
                            **(recipe["matching_arch_options"] or {}))
    return model.to(task.device).train()


def _train_on_synthetic(model, optimizer, images, labels, epochs: int, batch_size: int, generator) -> None:
    """DC's inner loop: `epochs` shuffled passes of CE training on the (detached) synthetic set."""
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator).to(images.device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@dataclass
class SyntheticRun:
    """The synthetic images of a DC-style loop and their bookkeeping, as `dc` and `dc_pool` share
    them: class-major labels, the images (noise or real initialisation), DC's SGD on them at a
    constant lr, the loop's generator, the checkpoint and where a resumed run starts."""
    images: torch.Tensor
    labels: torch.Tensor
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    checkpoint: Resumable
    log_every: int
    checkpoint_every: int
    history: list = field(default_factory=list)
    start: int = 0
    elapsed: float = 0.0
    bar: tqdm | None = None

    def progress(self, iterations: int, desc: str) -> tqdm:
        """The iterations left (from where a resumed run starts), as a progress bar on stderr:
        the job's log shows how far a run of hours has got."""
        self.bar = tqdm(range(self.start, iterations), desc=desc, file=sys.stderr, mininterval=5,
                        initial=self.start, total=iterations)
        return self.bar

    def end_iteration(self, it: int, iterations: int, mean_loss: float, began: float) -> None:
        """Log every `log_every` iterations and the last; checkpoint every `checkpoint_every`
        (not after the last: the set itself is the output). `began`: when this run's loop began."""
        if it % self.log_every == 0 or it == iterations - 1:
            self.history.append({"iteration": it + 1, "loss": mean_loss})
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        if self.checkpoint.path is not None and (it + 1) % self.checkpoint_every == 0 and it + 1 < iterations:
            self.checkpoint.save(self.optimizer, self.schedule, self.generator, self.history,
                                 images=self.images.detach().cpu(), iteration=it + 1,
                                 elapsed=self.elapsed + time.perf_counter() - began)


def start_synthetic(task: DistillTask, per_class: list[torch.Tensor], what: str) -> SyntheticRun:
    """The images from the run's seed (the generator draws the real choice or the noise first),
    then the checkpoint's state when one was written under the same settings."""
    r, classes, ipc, device = task.recipe, task.info.num_classes, int(task.ipc), task.device
    if r["init"] not in ("real", "noise"):
        raise TeddyError(f"unknown init '{r['init']}' (recipe key init: real or noise)")
    generator = torch.Generator().manual_seed(int(task.seed))
    labels = torch.arange(classes).repeat_interleave(ipc).to(device)  # class-major: [0]*ipc, [1]*ipc, ...
    shape = (classes * ipc, task.info.channels, task.info.image_size, task.info.image_size)
    if r["init"] == "real":
        chosen = torch.cat([idx[torch.randperm(len(idx), generator=generator)[:ipc]] for idx in per_class])
        images = stack_items(task.real, chosen)[0].to(device)
    else:
        images = torch.randn(shape, generator=generator).to(device)
    images.requires_grad_(True)
    optimizer = torch.optim.SGD([images], lr=float(r["lr"]), momentum=float(r["momentum"]))
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)  # DC's lr never moves
    settings = {"recipe": dict(r), "ipc": ipc, "seed": int(task.seed), "name": task.seed_name}
    checkpoint = Resumable(task.checkpoint_path, settings, "distillation checkpoint")
    run = SyntheticRun(images, labels, optimizer, constant, generator, checkpoint, int(r["log_every"]),
                       int(r["checkpoint_every"]))
    state = checkpoint.load(optimizer, constant, generator)
    if state is not None:
        with torch.no_grad():
            images.copy_(state["images"].to(device))
        run.history, run.start, run.elapsed = state["history"], state["iteration"], state["elapsed"]
        print(f"resuming {what} from {checkpoint.path} at iteration {run.start}/{r['iterations']}", file=sys.stderr)
    return run


def dc_work(recipe: dict, ipc: int, classes: int) -> float:
    """Image passes of one outer iteration, for costing a job: per matching step and class, the
    real batch's forward and backward and the synthetic images' through the second-order
    gradient (about 3 passes each); between steps, inner_loop epochs over the synthetic set."""
    outer, inner = dc_loops(ipc, recipe.get("outer_loop"), recipe.get("inner_loop"))
    matching = outer * classes * 3 * (int(recipe.get("batch_real", 256)) + ipc)
    return matching + (outer - 1) * inner * classes * ipc


# the recipe keys only dc reads (its part of the config schema)
RECIPE_KEYS = {
    "iterations": {"type": "integer", "minimum": 1},
    "lr": {"type": "number", "exclusiveMinimum": 0},
    "init": {"enum": ["real", "noise"]},
    "momentum": {"type": "number", "minimum": 0, "description": "dc: SGD momentum on the images (default 0.5; lr is the image lr, default 0.1)"},
    "lr_net": {"type": "number", "exclusiveMinimum": 0, "description": "dc: SGD lr of the matching network trained on the synthetic set (default 0.01)"},
    "net_momentum": {"type": "number", "minimum": 0, "description": "dc: SGD momentum of the matching network (default 0.5)"},
    "batch_real": {"type": "integer", "minimum": 1, "description": "dc: real images per class for each real gradient (default 256)"},
    "batch_train": {"type": "integer", "minimum": 1, "description": "dc: batch of the network's training on the synthetic set (default 256)"},
    "outer_loop": {"type": ["integer", "null"], "minimum": 1, "description": "dc: matching steps per network (null: DC's get_loops for the IPC)"},
    "inner_loop": {"type": ["integer", "null"], "minimum": 0, "description": "dc: epochs on the synthetic set between matching steps (null: DC's get_loops)"},
    "matching_arch": {"type": "string", "description": "dc: the matching network's architecture (default convnet)"},
    "matching_arch_options": {"type": "object", "description": "dc: its constructor options (default DC's ConvNet-3-128, instance norm, 28 px padded to 32)"},
}

@register_method("dc", recipe_keys=RECIPE_KEYS, per_batch=False, work=dc_work, defaults={
    "iterations": 1000, "lr": 0.1, "momentum": 0.5, "lr_net": 0.01, "net_momentum": 0.5, "batch_real": 256,
    "batch_train": 256, "init": "noise", "outer_loop": None, "inner_loop": None, "matching_arch": "convnet",
    "matching_arch_options": {"depth": 3, "width": 128, "norm": "instance", "mnist_padding": True},
    "log_every": 10, "checkpoint_every": 50})
def distill(task: DistillTask) -> Distilled:
    r = task.recipe
    per_class = real_indices_per_class(task)
    classes, ipc, device = task.info.num_classes, int(task.ipc), task.device
    outer_loop, inner_loop = dc_loops(ipc, r["outer_loop"], r["inner_loop"])
    iterations, batch_real = int(r["iterations"]), int(r["batch_real"])
    run = start_synthetic(task, per_class, "dc")
    images, labels, optimizer, generator = run.images, run.labels, run.optimizer, run.generator
    began = time.perf_counter()
    for it in run.progress(iterations, f"dc ipc{ipc}"):
        net = matching_network(task, r, generator)
        params = list(net.parameters())
        net_optimizer = torch.optim.SGD(params, lr=float(r["lr_net"]), momentum=float(r["net_momentum"]))
        total = 0.0
        for step in range(outer_loop):
            loss = images.new_zeros(())
            for c, idx in enumerate(per_class):
                real_idx = idx[torch.randperm(len(idx), generator=generator)[:batch_real]]
                x_real, y_real = stack_items(task.real, real_idx)
                real_loss = F.cross_entropy(net(x_real.to(device)), y_real.to(device))
                real_grads = [g.detach() for g in torch.autograd.grad(real_loss, params)]
                rows = slice(c * ipc, (c + 1) * ipc)
                syn_loss = F.cross_entropy(net(images[rows]), labels[rows])
                syn_grads = torch.autograd.grad(syn_loss, params, create_graph=True)
                loss = loss + dc_match(syn_grads, real_grads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.checkpoint.check_finite(loss.detach(), "dc", f"iteration {it + 1}, outer step {step + 1}")
            total += float(loss.detach())
            if step < outer_loop - 1:
                _train_on_synthetic(net, net_optimizer, images.detach().clone(), labels, inner_loop,
                                    int(r["batch_train"]), generator)
        run.end_iteration(it, iterations, total / (classes * outer_loop), began)
    seconds = run.elapsed + time.perf_counter() - began
    return Distilled(images.detach().cpu(), labels.cpu(),
                     {"history": run.history, "seconds": seconds, "outer_loop": outer_loop, "inner_loop": inner_loop})
