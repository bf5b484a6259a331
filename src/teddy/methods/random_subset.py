"""`random`: IPC random real images per class, the floor every method must beat.

Chosen for the whole set at once from the seed (the same real images `init: real` starts
teddy from), then written batch by batch like the optimised methods, so it shards and never
holds more than one batch of images."""

from teddy.methods.base import HARNESS_DEFAULTS, HARNESS_KEYS, Distilled, DistillTask, run_batches
from teddy.methods.registry import register_method


@register_method("random", recipe_keys=HARNESS_KEYS, per_batch=True,
                 defaults={"batch_size": HARNESS_DEFAULTS["batch_size"], "init": HARNESS_DEFAULTS["init"]})
def distill(task: DistillTask) -> Distilled:
    result = run_batches(task, None, desc=f"random ipc{task.ipc}")
    result.log["selected"] = sum(b["images"] for b in result.log["batches"])
    return result
