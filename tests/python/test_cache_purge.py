"""Cache purges from a Python gRPC client: `PurgeCache` numbers each purge in order and
refuses one that names nothing or an unknown cache, with the reason. (The nodes' side is in tests/e2e.)"""

import grpc
import pytest

from test_error_details import admin, control_plane  # noqa: F401  (pytest fixtures)


def test_purges_are_numbered_in_order_and_empty_or_unknown_ones_are_refused(admin, control_plane):  # noqa: F811
    messages, stubs = admin
    with grpc.insecure_channel(control_plane) as channel:
        stub = stubs.ConfigServiceStub(channel)
        first = stub.PurgeCache(messages.PurgeCacheRequest(key="shop.example/cart?id=7", wait=True), timeout=30)
        second = stub.PurgeCache(messages.PurgeCacheRequest(key="shop.example/static/", prefix=True), timeout=30)
        assert (first.seq, second.seq) == (1, 2)
        assert (first.nodes, first.applied, first.removed) == (0, 0, 0), "no node is connected"
        with pytest.raises(grpc.RpcError) as refused:
            stub.PurgeCache(messages.PurgeCacheRequest(), timeout=30)
        with pytest.raises(grpc.RpcError) as unknown:
            stub.PurgeCache(messages.PurgeCacheRequest(cache="pages", key="a.example/"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a purge needs a key, or a prefix" in refused.value.details()
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.value.details() == "no cache 'pages' in the latest version (see `vane get caches`)"
