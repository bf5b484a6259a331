"""dataset.download: true, against a loopback HTTP server serving generated Fashion-MNIST files
(dataset.download_mirror). Nothing here reaches the internet: every socket connection to a
non-loopback address fails the test, and torchvision's own mirrors are never used."""

from __future__ import annotations

import hashlib
import multiprocessing
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import tiny_config, write_fashion_mnist
from torchvision.datasets import FashionMNIST

from teddy.data import _normalise, read_idx
from teddy.datasets import dataset_info, load_split
from teddy.errors import TeddyError
from teddy.machine import dataset_cfg, dataset_settings, machine_from_config

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
REAL_MIRRORS = list(FashionMNIST.mirrors)


class Server:
    """A loopback HTTP server of `files` (name -> bytes) under /fm/, counting GETs per path;
    anything else is a 404. `delay` seconds per request make a download slow."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.delay = files, Counter(), 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] += 1
                time.sleep(server.delay)
                body = server.files.get(self.path.removeprefix("/fm/")) if self.path.startswith("/fm/") else None
                if body is None:
                    self.send_error(404, "File not found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(server, generated files folder): 20 train / 10 test images, gzipped IDX; torchvision's
    FashionMNIST checks them against their own md5s (its class attribute, restored after)."""
    source = write_fashion_mnist(tmp_path / "served", n_train=20, n_test=10)
    files = {name: (source / name).read_bytes() for name in FILES}
    monkeypatch.setattr(FashionMNIST, "resources", [(n, hashlib.md5(files[n]).hexdigest()) for n in FILES])
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"the test tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    server = Server(files)
    yield server, source
    server.close()


def cfg_for(root: Path, mirror: str) -> dict:
    return {"name": "fashion_mnist", "root": str(root), "download": True, "download_mirror": mirror}


def gets(server) -> int:
    return sum(server.requests.values())


def expected(source: Path, prefix: str):
    images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
    x = _normalise(torch.from_numpy(images.copy()).unsqueeze(1), dataset_info("fashion_mnist"))
    return x, torch.from_numpy(labels.astype(np.int64))


def test_download_reads_the_mirrors_files_back_and_never_fetches_twice(served, tmp_path):
    server, source = served
    root = tmp_path / "data" / "fm"  # does not exist yet
    cfg = cfg_for(root, f"{server.url}/fm")
    test = load_split(cfg, "test")
    x, y = expected(source, "t10k")
    assert torch.equal(test.images, x) and torch.equal(test.targets, y)
    train = load_split(cfg, "train_full")
    x, y = expected(source, "train")
    assert torch.equal(train.images, x) and torch.equal(train.targets, y)
    assert {path for path in server.requests} == {f"/fm/{name}" for name in FILES}
    assert (root / ".FashionMNIST.downloaded").is_file()
    assert not list(root.glob(".FashionMNIST.part-*"))
    assert FashionMNIST.mirrors == REAL_MIRRORS  # a subclass carried the mirror
    fetched = gets(server)
    assert len(load_split(cfg, "train")) + len(load_split(cfg, "val")) == 20
    assert gets(server) == fetched  # the second call makes no request
    # files from an earlier download without the marker (plain torchvision) are read as they are,
    # even from a mirror that answers nothing
    (root / ".FashionMNIST.downloaded").unlink()
    assert torch.equal(load_split(cfg_for(root, "http://127.0.0.1:9/"), "test").targets, test.targets)
    assert gets(server) == fetched


def _load(cfg, barrier, results):
    barrier.wait()
    results.put(load_split(cfg, "test").targets.tolist())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_jobs_download_once(served, tmp_path, capfd):
    server, source = served
    load_split(cfg_for(tmp_path / "one", f"{server.url}/fm"), "test")
    one_download = Counter(server.requests)
    server.requests.clear()
    server.delay = 0.05  # the first job is still fetching when the others ask
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    cfg = cfg_for(tmp_path / "shared", f"{server.url}/fm")
    jobs = [ctx.Process(target=_load, args=(cfg, barrier, results)) for _ in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(30)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    _, y = expected(source, "t10k")
    assert [results.get(timeout=5) for _ in jobs] == [y.tolist()] * 3
    assert server.requests == one_download  # fetched once, by one job
    assert "waiting for another job downloading" in capfd.readouterr().err


def test_a_404_is_one_line_naming_the_url_and_leaves_no_files(served, tmp_path):
    server, _ = served
    root = tmp_path / "fm"
    with pytest.raises(TeddyError) as err:
        load_split(cfg_for(root, f"{server.url}/missing/"), "test")
    message = str(err.value)
    assert "\n" not in message
    assert f"{server.url}/missing/train-images-idx3-ubyte.gz" in message and "404" in message
    assert [p.name for p in root.rglob("*")] == [".FashionMNIST.lock"]  # no partial files, no marker
    # the same root then downloads from a good mirror
    assert len(load_split(cfg_for(root, f"{server.url}/fm"), "test")) == 10


def test_the_mirror_reaches_the_job_but_is_not_a_recorded_setting():
    cfg = {"dataset": {"name": "fashion_mnist", "root": "/data", "download": True,
                       "download_mirror": "http://mirror.example/fm/", "num_workers": 0},
           "evaluate": {"num_workers": 0, "in_memory_max_mb": 1, "device_memory_fraction": 0.1},
           "device": "cpu", "gpus_per_job": 0, "results_dir": "r", "distill": {"stack": 1}}
    settings = {"dataset": dataset_settings(cfg)}
    assert "download_mirror" not in settings["dataset"] and "download" not in settings["dataset"]
    job = dataset_cfg(settings, machine_from_config(cfg))
    assert job["download_mirror"] == "http://mirror.example/fm/" and job["download"] is True
    cfg["dataset"].pop("download_mirror")
    assert "download_mirror" not in dataset_cfg(settings, machine_from_config(cfg))


def test_command_line_strings_become_the_schemas_scalars():
    """`snakemake --config 'dataset={root: d, download: true}'` hands the loader strings."""
    import yaml

    from teddy.schema import SCHEMA, coerce_strings

    schema = yaml.safe_load(SCHEMA.read_text())
    cfg = {"dataset": {"name": "fashion_mnist", "root": "123", "download": "true", "val_fraction": "0.2",
                       "train_limit": "null", "split_seed": "3", "download_mirror": "http://m/"},
           "distill": {"ipc": ["1", "10"]}}
    coerce_strings(cfg, schema)
    assert cfg["dataset"] == {"name": "fashion_mnist", "root": "123", "download": True, "val_fraction": 0.2,
                              "train_limit": None, "split_seed": 3, "download_mirror": "http://m/"}
    assert cfg["distill"]["ipc"] == [1, 10]
    assert coerce_strings({"dataset": {"download": "maybe"}}, schema)["dataset"]["download"] == "maybe"


def test_command_line_strings_of_a_methods_own_keys_become_its_scalars(tmp_path):
    """`--config 'distill={methods: {p: {method: dc_pool, pool_size: 4}}}'`: pool_size is a key of
    dc_pool's own recipe (not the schema's), read as the integer it spells; a bad one names it."""
    from teddy.config import load_config

    def with_pool_size(size: str) -> dict:
        cfg = tiny_config(tmp_path)
        cfg["distill"]["methods"] = {"p": {"method": "dc_pool", "pool_size": size, "lr": "0.05", "pool_kind": "random"}}
        return cfg

    recipe = load_config(with_pool_size("4"))["distill"]["methods"]["p"]
    assert recipe["pool_size"] == 4 and recipe["lr"] == 0.05 and recipe["pool_kind"] == "random"
    with pytest.raises(TeddyError, match=r"distill\.methods\.p\.pool_size"):
        load_config(with_pool_size("four"))
