"""The admin API's errors as a Python gRPC client reads them.

A refused config is a standard ``google.rpc.Status`` in ``grpc-status-details-bin``:
``grpc_status.rpc_status.from_call`` gives its code, its message and a
``google.rpc.BadRequest`` naming the field, beside Vane's own ``ValidateResponse``. The
stubs are generated from proto/proto at test time (grpcio-tools: no protoc to install);
the control plane is the real ``vane`` binary (``VANE_BIN``, default the debug build) on
an ephemeral port, read from its readiness line. Nothing here skips: a missing binary or
package fails the test.
"""

import importlib
import os
import pathlib
import re
import selectors
import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto" / "proto"


def vane_binary():
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    path = pathlib.Path(os.environ.get("VANE_BIN", os.path.join(target, "debug", "vane")))
    assert path.is_file(), f"{path} is missing: build it first (cargo build) or set VANE_BIN"
    return path


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    """The generated `vane.admin.v1` modules: (messages, stubs)."""
    out = tmp_path_factory.mktemp("stubs")
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    protos = [str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto")]
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(args + protos) == 0, "stub generation failed"
    sys.path.insert(0, str(out))
    try:
        return (
            importlib.import_module("vane.admin.v1.admin_pb2"),
            importlib.import_module("vane.admin.v1.admin_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@pytest.fixture()
def control_plane(tmp_path):
    """`vane control-plane` on 127.0.0.1:0; yields its address."""
    process = subprocess.Popen(
        [str(vane_binary()), "control-plane", "--data-dir", str(tmp_path / "store"), "--listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "VANE_TOKEN"},
    )
    try:
        line = readiness_line(process, deadline=time.monotonic() + 20)
        found = re.match(r"vane control-plane listening on (\S+) \(version \d+\)", line)
        assert found, f"unexpected readiness line: {line!r}"
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=20)


def readiness_line(process, deadline):
    """The first line the process prints, waited for until `deadline`."""
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no readiness line in time (got {line!r})"
        if not selector.select(timeout=remaining):
            continue
        # The raw descriptor: a buffered read would take more than is ready and block.
        chunk = os.read(process.stdout.fileno(), 4096)
        assert chunk, f"vane exited before it was ready (exit code {process.poll()})"
        line += chunk
    return line.split(b"\n", 1)[0].decode()


def apply_error(admin, address, config, **flags):
    """Calls Apply and returns the RpcError it must fail with."""
    messages, stubs = admin
    request = json_format.ParseDict({"config": config, **flags}, messages.ApplyRequest())
    with grpc.insecure_channel(address) as channel:
        stub = stubs.ConfigServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Apply(request, timeout=30)
    return refused.value


def test_an_invalid_config_is_invalid_argument_with_a_bad_request_naming_the_field(admin, control_plane):
    messages, _ = admin
    config = {
        "listeners": [{"name": "web", "address": "127.0.0.1:0"}],
        "clusters": [{"name": "echo", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "routes": [{"name": "api", "match": {"prefix": "/api"}, "forward": {"clusters": [{"name": "nope"}]}}],
    }
    call = apply_error(admin, control_plane, config)
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT

    status = rpc_status.from_call(call)
    assert status is not None, "grpc-status-details-bin holds a google.rpc.Status"
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "invalid config: route 'api': forward.clusters[0].name: unknown cluster 'nope'"

    bad_requests = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    assert len(bad_requests) == 1
    bad_request = error_details_pb2.BadRequest()
    bad_requests[0].Unpack(bad_request)
    [violation] = bad_request.field_violations
    assert violation.field == "config.routes[0].forward.clusters[0].name"
    assert violation.description == "route 'api': unknown cluster 'nope'"

    ours = [d for d in status.details if d.Is(messages.ValidateResponse.DESCRIPTOR)]
    assert [d.type_url for d in ours] == ["type.googleapis.com/vane.admin.v1.ValidateResponse"]
    validation = messages.ValidateResponse()
    ours[0].Unpack(validation)
    assert [(e.kind, e.name, e.field) for e in validation.errors] == [("route", "api", "forward.clusters[0].name")]


def test_an_empty_config_is_refused_with_a_bad_request_on_config(admin, control_plane):
    call = apply_error(admin, control_plane, {})
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(call)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message.startswith("the config is empty")
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "config"
