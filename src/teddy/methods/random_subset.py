"""`random`: IPC random real images per class, the floor every method must beat.

Chosen for the whole set at once from the seed (the same real images `init: real` starts
teddy from), then written batch by batch like the optimised methods, so it shards and never
holds more than one batch of images."""

from teddy.methods.base import Distilled, DistillTask, run_batches

PER_BATCH = True


def distill(task: DistillTask) -> Distilled:
    result = run_batches(task, None, desc=f"random ipc{task.ipc}")
    result.log["selected"] = sum(b["images"] for b in result.log["batches"])
    return result
