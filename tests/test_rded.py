"""rded: stitched images made of the best-scored real patches, deterministic from the seed,
with one-line errors for bad recipes; and the region-wise teacher of benchmarks/rded_labels.py."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from teddy.config import check_config
from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.methods import DistillTask, full_recipe, get_method
from teddy.methods.rded import random_square_crops, select_patches
from teddy.pool import WeakPool

SIZE, CLASSES, PER_CLASS = 8, 3, 12
INFO = DatasetInfo("toy", CLASSES, 1, SIZE, (0.5,), (0.5,))
pytestmark = pytest.mark.usefixtures("one_thread")


class LinearObserver(nn.Module):
    """A fixed random linear classifier on the flattened image: scores that differ from image
    to image and from crop to crop, computable in the test."""

    def __init__(self, seed=0, channels=1, size=SIZE, classes=CLASSES):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(channels * size * size, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def constant_set():
    """Every real image constant, with a value of its own: a patch's value names its source."""
    values = torch.linspace(-1.5, 1.5, CLASSES * PER_CLASS)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    images = values.view(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE).clone()
    return TensorImageDataset(images, labels, [str(c) for c in range(CLASSES)]), values


def textured_set(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    return TensorImageDataset(torch.randn(len(labels), 1, SIZE, SIZE, generator=g), labels,
                              [str(c) for c in range(CLASSES)])


def pool(names=("base",)):
    return WeakPool([LinearObserver(i) for i in range(len(names))], list(names))


def run(real, ipc=2, seed=0, members=("base",), **recipe):
    recipe = {"method": "rded", "factor": 2, "crops_per_image": 3, "candidates_per_class": None, **recipe}
    return get_method("rded")(DistillTask(real, INFO, pool(members), ipc, recipe, seed=seed))


def ce_of_padded(observer, patches, label):
    """The score the method must use, computed here independently: the patch centred on a zero
    canvas of the full size, then the true-class cross-entropy."""
    canvas = torch.zeros(len(patches), 1, SIZE, SIZE)
    p = patches.shape[-1]
    start = (SIZE - p) // 2
    canvas[..., start:start + p, start:start + p] = patches
    with torch.no_grad():
        return F.cross_entropy(observer(canvas), torch.full((len(patches),), label), reduction="none")


def test_stitched_quadrants_each_come_from_one_real_image_of_the_right_class():
    real, values = constant_set()
    result = run(real, ipc=2)
    assert result.images.shape == (CLASSES * 2, 1, SIZE, SIZE)
    assert result.labels.tolist() == [0, 0, 1, 1, 2, 2]
    half = SIZE // 2
    for image, label in zip(result.images, result.labels):
        sources = []
        for quadrant in (image[:, :half, :half], image[:, :half, half:], image[:, half:, :half], image[:, half:, half:]):
            assert torch.allclose(quadrant, quadrant.flatten()[0].expand_as(quadrant), atol=1e-5)  # one source
            source = int(torch.argmin((values - quadrant.mean()).abs()))
            assert abs(values[source] - quadrant.mean()) < 1e-4
            assert int(real.targets[source]) == int(label)
            sources.append(source)
        assert len(set(sources)) == 4  # four different real images


def test_chosen_patches_are_the_best_scored_ones_in_rank_order():
    real, values = constant_set()
    observer = LinearObserver(0)
    ipc, factor = 2, 2
    result = run(real, ipc=ipc)
    half = SIZE // 2
    for c in range(CLASSES):
        idx = torch.nonzero(real.targets == c).flatten()
        # constant images: every crop of an image is the same constant patch
        scores = ce_of_padded(observer, real.images[idx][..., :half, :half], c)
        ranked = values[idx][torch.argsort(scores, stable=True)][: ipc * factor ** 2]
        images = result.images[result.labels == c]
        for i in range(ipc):
            tiles = [images[i, 0, :half, :half], images[i, 0, :half, half:], images[i, 0, half:, :half],
                     images[i, 0, half:, half:]]
            for k, tile in enumerate(tiles):  # tile k of image i holds patch k * ipc + i
                assert tile.mean().item() == pytest.approx(ranked[k * ipc + i].item(), abs=1e-5)


def test_each_source_keeps_its_best_crop_and_the_class_keeps_its_best_sources():
    real = textured_set()
    observer = LinearObserver(0)
    s = full_recipe({"method": "rded", "factor": 2, "crops_per_image": 4})
    images, count = real.images[real.targets == 1], 5
    crops, _ = random_square_crops(images, 4, SIZE // 2, s["crop_scale"], torch.Generator().manual_seed(7))
    scores = ce_of_padded(observer, crops.flatten(0, 1), 1).view(len(images), 4)
    best, best_crop = scores.min(1)
    order = torch.argsort(best)[:count]
    picked = select_patches(observer, images, 1, count, s, SIZE, torch.device("cpu"), torch.Generator().manual_seed(7))
    assert picked["sources"].tolist() == order.tolist()
    assert torch.allclose(picked["scores"], best[order], atol=1e-5)
    assert torch.allclose(picked["patches"], crops[order, best_crop[order]])
    assert (picked["scores"][:-1] <= picked["scores"][1:]).all()
    assert (scores.min() == picked["scores"][0]) and picked["scores"][-1] < scores.max()


def test_same_seed_same_set_other_seed_other_set():
    real = textured_set()
    first, again, other = run(real, seed=3), run(real, seed=3), run(real, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)


def test_factor_one_gives_whole_crops_and_observer_can_be_named():
    real = textured_set()
    result = run(real, ipc=3, factor=1, members=("epoch1", "epoch2"), observer="epoch2")
    assert result.images.shape == (CLASSES * 3, 1, SIZE, SIZE) and result.log["factor"] == 1


@pytest.mark.parametrize("recipe, members, message", [
    ({"factor": 3}, ("base",), "factor=3 does not divide the image size 8"),
    ({"observer": "epoch9"}, ("base",), "observer 'epoch9' is not a member"),
    ({}, ("epoch1", "epoch2"), "name the observer"),
    ({"candidates_per_class": 20}, ("base",), "class 0 has 12 real images, fewer than the 20 asked for"),
    ({"candidates_per_class": 6}, ("base",), "candidates_per_class=6 is below IPC x factor^2 = 8"),
])
def test_bad_recipes_give_one_line(recipe, members, message):
    with pytest.raises(TeddyError, match=message.replace("^", r"\^")) as err:
        run(textured_set(), ipc=2, members=members, **recipe)
    assert "\n" not in str(err.value)


def test_fewer_real_images_than_patches_needed_is_refused():
    with pytest.raises(TeddyError, match="class 0 has 12 real images, fewer than the 16"):
        run(textured_set(), ipc=4, candidates_per_class=None)


def test_config_check_refuses_a_bad_rded_recipe_when_the_workflow_loads():
    cfg = {"dataset": {"name": "fashion_mnist", "root": "."}, "base": {"arch": "convnet", "recipe": {"epochs": 1}},
           "pools": {"single": {"generator": "single"}, "prior": {"generator": "prior", "epochs": [1]}},
           "distill": {"ipc": [1], "methods": {"r": {"method": "rded", "pool": "single"}}},
           "evaluate": {"students": ["convnet"], "seeds": [0], "protocols": ["teddy_small_kd"]}}
    check_config(cfg)
    for recipe, message in [({"factor": 3}, "distill.methods.r.factor=3 does not divide the image size 28"),
                            ({"observer": "epoch1"}, "distill.methods.r.observer 'epoch1' is not a member"),
                            ({"pool": None}, "distill.methods.r.pool must name a pool")]:
        recipe = {"method": "rded", "pool": "single", **recipe}
        cfg["distill"]["methods"]["r"] = {k: v for k, v in recipe.items() if v is not None}  # None: no pool
        with pytest.raises(TeddyError, match=message):
            check_config(cfg)


# --- region-wise labels ------------------------------------------------------------------------

def test_region_teacher_softens_to_the_mean_of_the_cells_distributions():
    from fixtures import benchmark

    bench = benchmark("rded_labels")  # the teacher lives in the one benchmark that uses it
    RegionTeacher, grid_cells = bench.RegionTeacher, bench.grid_cells
    teacher, t = LinearObserver(1), 4.0
    x = torch.randn(5, 1, SIZE, SIZE)
    cells = grid_cells(x, 2)
    assert torch.equal(cells[2, 1], x[2, :, :4, 4:]) and torch.equal(cells[2, 2], x[2, :, 4:, :4])
    expected = torch.stack([F.softmax(teacher(F.interpolate(cells[:, k], size=(SIZE, SIZE), mode="bilinear",
                                                                align_corners=False)) / t, dim=1)
                            for k in range(4)]).mean(0)
    got = F.softmax(RegionTeacher(teacher, 2, t)(x) / t, dim=1)
    assert torch.allclose(got, expected, atol=1e-5)
    whole = F.softmax(teacher(x) / t, dim=1)
    assert not torch.allclose(got, whole, atol=1e-3)
    assert torch.allclose(F.softmax(RegionTeacher(teacher, 1, t)(x) / t, dim=1), whole, atol=1e-5)


def test_image_folder_gives_the_set_the_same_images_in_memory_give(tmp_path):
    from fixtures import write_image_folder

    from teddy.data import stack_items
    from teddy.datasets import dataset_info, load_split

    root = write_image_folder(tmp_path / "tiny", per_class=5, size=64)
    folder = load_split({"name": "tiny_imagenet", "root": str(root), "val_fraction": 0.0, "num_workers": 1}, "train")
    images, targets = stack_items(folder, range(len(folder)))
    memory = TensorImageDataset(images, targets, folder.class_names)
    info = dataset_info("tiny_imagenet")
    info = DatasetInfo(info.name, 3, 3, 64, info.mean, info.std)
    recipe = {"method": "rded", "factor": 2, "crops_per_image": 2, "candidates_per_class": 4}
    observer = WeakPool([LinearObserver(0, channels=3, size=64)], ["base"])
    a, b = (get_method("rded")(DistillTask(real, info, observer, 1, recipe, seed=1)) for real in (folder, memory))
    assert a.images.shape == (3, 3, 64, 64) and torch.equal(a.labels, b.labels)
    assert torch.allclose(a.images, b.images)


def test_distill_stage_writes_an_rded_set_scored_by_the_single_pool_member(tmp_path, fmnist_root):
    from teddy import stages
    from teddy.datasets import dataset_info, load_split
    from teddy.distilled_set import load_set_tensors, quantise
    from teddy.job_files import Files
    from teddy.pool import load_model, save_model
    from teddy.stages import run_stage

    recipe = {"method": "rded", "pool": "single", "factor": 2, "crops_per_image": 2, "candidates_per_class": 8}
    cfg = {"dataset": {"name": "fashion_mnist", "root": str(fmnist_root), "val_fraction": 0.0}, "device": "cpu",
           "base": {"arch": "convnet"}, "arch_options": {"convnet": {"depth": 1, "width": 4}},
           "pools": {"single": {"generator": "single"}}, "distill": {"ipc": [2], "methods": {"rded": recipe}}}
    save_model(tmp_path / "base.pt", stages.build(cfg, "convnet", seed=0), {"arch": "convnet"})
    set_dir = tmp_path / "distilled" / "rded" / "ipc2"
    # a set-level method: one shard holding the whole set, then the gather
    done = set_dir / "shards" / "0" / "done.json"
    run_stage("distill", cfg, {"method": "rded", "ipc": 2, "shard": 0}, Files(pool=[tmp_path / "base.pt"]),
              Files(done=done))
    run_stage("gather", cfg, {"method": "rded", "ipc": 2}, Files(shards=[done]),
              Files(meta=set_dir / "meta.json", grid=set_dir / "grid.png", log_json=set_dir / "log.json"))
    log = json.loads((set_dir / "log.json").read_text())["batches"][0]
    images, labels, meta = load_set_tensors(set_dir)
    assert images.shape == (20, 1, 28, 28) and labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert meta["method"] == "rded" and log["factor"] == 2 and log["patches"] == 80
    # the stage's set is the method's own output, as stored
    task = DistillTask(load_split(cfg["dataset"], "train"), dataset_info(cfg["dataset"]),
                       WeakPool([load_model(tmp_path / "base.pt")[0]], ["base"]), 2, recipe)
    direct = get_method("rded")(task)
    assert torch.allclose(images, quantise(direct.images, (0.2860,), (0.3530,)), atol=1e-5)
