"""Encoding in several processes: the single-process vectors exactly, in input order, every encode keyword,
typed errors by input position, and a dead worker stops the pool without leaving processes behind."""

from __future__ import annotations

import inspect
import os
import signal
import time

import numpy as np
import pytest
import torch

import embedhub
from embedhub import EmbeddingModel, InputError, ModalityError, PoolError

psutil = pytest.importorskip("psutil")

#: texts of many lengths, in no order, so that batches are planned by length across the whole input
TEXTS = [("lorem ipsum dolor " * ((i * 7) % 11)) + f"sentence number {i}" for i in range(90)]
#: a value of each encode keyword that changes what encode does (None: only the default is exercised)
SAMPLES = {
    "batch_size": 3,
    "normalize": False,
    "show_progress_bar": True,
    "convert_to": "torch",
    "max_tokens": 40,
    "max_image_pixels": 10**7,
    "prompt": "query: ",
    "prompt_name": None,
    "task": None,
    "truncate_dim": 16,
    "precision": "int8",
}


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie that no one reaped counts as left behind too)."""
    return psutil.pid_exists(pid)


def _children() -> set[int]:
    """This process's child processes, but for multiprocessing's resource tracker (started once, kept)."""
    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                out.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def model(tiny_embedhub_dir):
    return embedhub.load(tiny_embedhub_dir, device="cpu")


@pytest.fixture(scope="module")
def pool(model):
    with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        yield pool
    assert not any(_alive(pid) for pid in pool.pids)


@pytest.fixture(scope="module")
def mixed(photos) -> list:
    items: list = list(TEXTS)
    for i, photo in enumerate(photos * 2):
        items.insert(7 * i + 3, photo.resize((40 + 9 * i, 36 + 5 * i)))
    return items


def test_two_processes_give_the_single_process_result_exactly(model, pool, mixed):
    single = model.encode(mixed, batch_size=8)
    for chunk_size in (5, 16, None):
        ours = model.encode(mixed, pool=pool, batch_size=8, chunk_size=chunk_size)
        assert ours.dtype == single.dtype and ours.shape == single.shape
        np.testing.assert_array_equal(ours, single)
    order = np.random.default_rng(0).permutation(len(mixed))
    shuffled = [mixed[i] for i in order]
    ours = model.encode(shuffled, pool=pool, batch_size=8, chunk_size=7)
    np.testing.assert_array_equal(ours, model.encode(shuffled, batch_size=8))
    np.testing.assert_allclose(ours, single[order], atol=1e-6)  # results come back in input order
    assert sorted(set(pool.pids)) == sorted(pool.pids) and all(_alive(pid) for pid in pool.pids)


@pytest.mark.parametrize("name", [n for n in inspect.signature(EmbeddingModel.encode).parameters
                                  if n not in ("self", "inputs", "pool", "device", "chunk_size")])
def test_every_encode_keyword_works_through_the_pool(model, pool, name):
    if name not in SAMPLES:
        pytest.fail(f"encode keyword {name!r} has no sample value here: add one to SAMPLES")
    value = SAMPLES[name]
    texts = TEXTS[:40]
    kwargs = {name: value} if value is not None else {}
    single = model.encode(texts, **kwargs)
    ours = model.encode(texts, pool=pool, chunk_size=6, **kwargs)
    assert type(ours) is type(single)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(single))


def test_text_image_methods_and_single_inputs(model, pool, photos):
    np.testing.assert_array_equal(model.encode_text(texts=TEXTS[:9], pool=pool, chunk_size=2, batch_size=2),
                                  model.encode_text(TEXTS[:9], batch_size=2))
    np.testing.assert_array_equal(model.encode_image(photos, pool=pool, batch_size=1, chunk_size=1),
                                  model.encode_image(photos, batch_size=1))
    np.testing.assert_array_equal(model.encode_query(TEXTS[:9], pool=pool, chunk_size=3, batch_size=2),
                                  model.encode_query(TEXTS[:9], batch_size=2))
    np.testing.assert_array_equal(model.encode_document(TEXTS[:9], prompt="passage: ", pool=pool, chunk_size=3),
                                  model.encode_document(TEXTS[:9], prompt="passage: "))
    one = model.encode("just one", pool=pool, convert_to="torch")
    assert isinstance(one, torch.Tensor) and one.shape == (model.embed_dim,)
    assert model.encode([], pool=pool).shape == model.encode([]).shape
    with pytest.raises(ModalityError, match=r"inputs\[1\]"):
        model.encode_text(["a text", photos[0]], pool=pool)


def test_errors_in_a_chunk_name_the_input_and_keep_the_pool(model, pool):
    items = [*TEXTS[:20], b"these bytes are no image", *TEXTS[20:30]]
    with pytest.raises(InputError, match=r"inputs\[20\]") as err:
        model.encode(items, pool=pool, chunk_size=4)
    assert err.value.index == 20
    with pytest.raises(InputError, match=r"inputs\[4\]"):
        model.encode([*TEXTS[:4], "bad \ud800"], pool=pool)
    with pytest.raises(TypeError, match="no_such_keyword"):
        model.encode(TEXTS, pool=pool, no_such_keyword=1)
    with pytest.raises(TypeError, match="no_such_keyword"):
        model.encode_text(texts=TEXTS, pool=pool, no_such_keyword=1)
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(TEXTS, pool=pool, batch_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        model.encode(TEXTS, pool=pool, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        model.encode(TEXTS, chunk_size=10)
    with pytest.raises(ValueError, match="not both"):
        model.encode(TEXTS, pool=pool, device=["cpu"])
    assert not pool.stopped
    np.testing.assert_array_equal(model.encode(TEXTS, pool=pool), model.encode(TEXTS))


def test_device_list_runs_a_pool_for_the_call(model):
    before = _children()
    ours = model.encode(TEXTS, device=["cpu", "cpu"], batch_size=4, chunk_size=8)
    np.testing.assert_array_equal(ours, model.encode(TEXTS, batch_size=4))
    assert _children() <= before  # the pool started for the call is gone, none of its workers a zombie
    with pytest.raises(ValueError, match=r"devices\[1\]"):
        model.encode(TEXTS, device=["cpu", "tpu:7"])
    with pytest.raises(ValueError, match="list of devices"):
        model.encode(TEXTS, device="cuda:3")


def test_a_dead_worker_names_its_chunk_and_stops_the_pool(model):
    with model.start_multi_process_pool(["cpu", "cpu"]) as pool:
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _alive(victim) and psutil.Process(victim).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(PoolError, match=rf"worker 0 \(cpu, pid {victim}\).*exit code -9.*chunk 1 of \d+ "
                                            r"\(\d+ inputs: inputs\[") as err:
            model.encode(TEXTS, pool=pool, chunk_size=10)
        assert "the pool is stopped" in str(err.value)
        assert pool.stopped
        assert not any(_alive(pid) for pid in pool.pids)  # no worker left behind, none a zombie
        with pytest.raises(PoolError, match="stopped"):
            model.encode(TEXTS, pool=pool)
    model.stop_multi_process_pool(pool)  # stopping again does nothing


def test_pool_belongs_to_its_model(model, pool, tiny_st_dir):
    other = embedhub.load(tiny_st_dir, device="cpu")
    with pytest.raises(ValueError, match="start a pool of this model"):
        other.encode(TEXTS, pool=pool)
    with pytest.raises(TypeError, match="MultiProcessPool"):
        model.encode(TEXTS, pool={"processes": []})
