"""The method registry: `@register_method(name, per_batch=..., defaults=...)`, one `full_recipe`."""

import pytest
import torch

from teddy.data import DatasetInfo, TensorImageDataset
from teddy.errors import TeddyError
from teddy.jobs import method_shards
from teddy.methods import METHODS, Distilled, DistillTask, full_recipe, get_method, per_batch, register_method
from teddy.methods.base import HARNESS_DEFAULTS

INFO = DatasetInfo("toy", 10, 1, 8, (0.5,), (0.5,))


@pytest.fixture
def probe():
    """A method registered for one test: it returns what it was given."""
    seen = {}

    @register_method("probe", per_batch=True, defaults={"iterations": 7, "alpha": 0.5})
    def distill(task):
        seen["recipe"] = task.recipe
        return Distilled(torch.zeros(0), torch.zeros(0, dtype=torch.long), {})
    yield seen
    METHODS.unregister("probe")


def test_every_method_module_registers_itself():
    assert set(METHODS) == {"teddy", "random", "sre2l", "bilevel", "herding", "import", "rded", "dc", "dc_pool"}
    assert {n for n in METHODS if per_batch(n)} == {"teddy", "random", "sre2l", "bilevel"}


def test_the_decorator_registers_name_per_batch_and_defaults(probe):
    assert METHODS["probe"].per_batch and per_batch("probe")
    assert full_recipe({"method": "probe", "alpha": 2.0}) == {"iterations": 7, "alpha": 2.0, "method": "probe"}
    with pytest.raises(TeddyError, match="registered twice"):
        register_method("probe")(lambda task: None)


def test_get_method_hands_the_method_its_full_recipe(probe):
    task = DistillTask(TensorImageDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), []), INFO,
                       None, 1, {"alpha": 3.0})
    get_method("probe")(task)
    assert probe["recipe"] == {"iterations": 7, "alpha": 3.0}
    assert task.recipe == {"alpha": 3.0}  # the caller's task is left as it was


@pytest.mark.parametrize("call", [lambda: get_method("nope"), lambda: per_batch("nope"),
                                  lambda: full_recipe({"method": "nope"})])
def test_an_unknown_method_is_one_line_naming_the_key(call):
    with pytest.raises(TeddyError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and "'nope'" in message and "distill.methods.*.method" in message


def test_full_recipe_fills_the_method_defaults_and_keeps_the_recipe_values():
    sre2l = full_recipe({"method": "sre2l", "lr": 0.1})
    assert sre2l["iterations"] == 4000 and sre2l["init"] == "noise" and sre2l["lr"] == 0.1
    teddy = full_recipe({"method": "teddy"})
    assert {k: teddy[k] for k in HARNESS_DEFAULTS} == HARNESS_DEFAULTS and teddy["matching"] == "statistics"
    assert full_recipe({"method": "rded", "factor": 2})["candidates_per_class"] == 300
    assert full_recipe({"iterations": 5}, "bilevel")["unroll_steps"] == 10


def test_defaults_are_plain_json_data():
    import json

    for method in METHODS.values():
        assert json.loads(json.dumps(method.defaults)) == method.defaults, method.name


def test_the_batch_plan_reads_the_method_defaults():
    cfg = {"distill": {"batches_per_shard": 1, "methods": {"s": {"method": "sre2l"},
                                                          "small": {"method": "sre2l", "batch_size": 10}}}}
    assert len(method_shards(cfg, "s", 10, 10)) == 1            # batch_size 100 from the defaults
    assert len(method_shards(cfg, "small", 10, 10)) == 10
