"""Routes by task (sentence-transformers' Router): two tiny towers, one for queries, one for documents."""

from __future__ import annotations

import numpy as np
import pytest

import embedhub
from embedhub import EmbeddingModel

TEXTS = ["A man is playing a guitar.", "Plants grow from seeds.", "x"]


@pytest.fixture(scope="module")
def towers(tiny_st_dir, other_st_dir):
    """The query and document models (same architecture, other weights) as loaded by embedhub."""
    return embedhub.load(tiny_st_dir, device="cpu"), embedhub.load(other_st_dir, device="cpu")


def _routed(query, document, *, default_route="document") -> EmbeddingModel:
    q = (query.towers["text"], query.preprocessors["text"])
    d = (document.towers["text"], document.preprocessors["text"])
    return EmbeddingModel({"text": d[0]}, {"text": d[1]}, embed_dim=32, name="routed", format="test",
                          routes={"query": {"text": q}, "document": {"text": d}}, default_route=default_route)


def test_task_picks_the_route(towers):
    query, document = towers
    model = _routed(query, document)
    assert model.routes == ("query", "document") and model.default_route == "document"
    np.testing.assert_allclose(model.encode_query(TEXTS), query.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(model.encode_document(TEXTS), document.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS, task="query"), query.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS), document.encode(TEXTS), atol=1e-6)  # the default route
    assert not np.allclose(model.encode_query(TEXTS), model.encode_document(TEXTS), atol=1e-3)


def test_unknown_task_and_missing_default_are_errors(towers):
    query, document = towers
    model = _routed(query, document)
    with pytest.raises(ValueError, match=r"no route for task 'clustering'; its routes are \['document', 'query'\]"):
        model.encode(TEXTS, task="clustering")
    no_default = _routed(query, document, default_route=None)
    with pytest.raises(ValueError, match="no default route"):
        no_default.encode(TEXTS)
    with pytest.raises(ValueError, match="default_route 'passage' is not one of the routes"):
        _routed(query, document, default_route="passage")
    with pytest.raises(ValueError, match="task must be None or a string"):
        model.encode(TEXTS, task=3)


def test_task_is_ignored_without_routes(towers):
    query, _ = towers
    np.testing.assert_allclose(query.encode(TEXTS, task="anything"), query.encode(TEXTS), atol=0)


def test_route_towers_are_part_of_the_memory_fingerprint(towers):
    query, document = towers
    a, b = _routed(query, document), _routed(document, document)
    assert a.fingerprint.id != b.fingerprint.id
