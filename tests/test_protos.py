"""The committed gRPC stubs are exactly what protos/gls/v1 generates: a stale stub fails here."""

from pathlib import Path

from services import protogen


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    assert {path.name for path in written} >= {"common_pb2.py", "bound_worker_pb2_grpc.py", "certifier_pb2_grpc.py"}
    committed = protogen.STUB_ROOT / protogen.PACKAGE
    for path in written:
        assert (committed / path.name).read_text() == path.read_text(), (
            f"{path.name} is stale: run `python -m services.protogen` after changing protos/gls/v1")
    stale = {p.name for p in committed.glob("*_pb2*")} - {p.name for p in written}
    assert not stale, f"stubs without a proto: {sorted(stale)}"


def test_package_is_versioned() -> None:
    from services.proto.gls.v1 import bound_worker_pb2, certifier_pb2

    assert bound_worker_pb2.DESCRIPTOR.package == "gls.v1"
    assert certifier_pb2.DESCRIPTOR.services_by_name["Certifier"].full_name == "gls.v1.Certifier"
    assert bound_worker_pb2.DESCRIPTOR.services_by_name["BoundWorker"].full_name == "gls.v1.BoundWorker"


def test_pins_match_the_generated_stubs() -> None:
    """The generator is pinned to the version that wrote the stubs, and the runtime floors to what they check."""
    import re
    import tomllib

    project = tomllib.loads((protogen.ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"]["dev"] + project["optional-dependencies"]["services"]
    stubs = protogen.STUB_ROOT / protogen.PACKAGE
    grpc_made = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (stubs / "bound_worker_pb2_grpc.py").read_text())
    proto_made = re.search(r"Protobuf Python Version: ([\d.]+)", (stubs / "common_pb2.py").read_text())
    assert grpc_made and proto_made
    assert f"grpcio-tools=={grpc_made[1]}" in requirements
    assert f"grpcio>={grpc_made[1]}" in requirements
    major = proto_made[1].split(".")[0]
    assert f"protobuf>={proto_made[1]},<{int(major) + 1}" in requirements
    constraints = (protogen.ROOT / "constraints.txt").read_text().splitlines()
    assert f"grpcio-tools=={grpc_made[1]}" in constraints
