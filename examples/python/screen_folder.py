#!/usr/bin/env python3
"""Screen a folder of PNG images with a pathguard server, from Python.

Stubs are generated from pathguard's own proto at start-up (grpcio-tools), so the only
requirements are `pip install grpcio grpcio-tools`.

    python screen_folder.py --server 127.0.0.1:50051 path/to/pngs

prints one JSON line per image (id, class, score, flag) and a summary on stderr; exits 2 if
any image is flagged and --fail-on-flag is given.
"""

import argparse
import importlib
import json
import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    """Compiles proto/pathguard/v1/screening.proto into a temporary package and imports it."""
    out = pathlib.Path(tempfile.mkdtemp(prefix="pathguard-stubs-"))
    proto = "pathguard/v1/screening.proto"
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", proto])
    if code != 0:
        sys.exit(f"protoc failed on {PROTO_ROOT / proto}")
    sys.path.insert(0, str(out))
    return (
        importlib.import_module("pathguard.v1.screening_pb2"),
        importlib.import_module("pathguard.v1.screening_pb2_grpc"),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fail-on-flag", action="store_true")
    args = parser.parse_args()

    pb, rpc = load_stubs()
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() == ".png")
    if not files:
        sys.exit(f"no PNG files under {args.folder}")
    stub = rpc.ScreeningStub(grpc.insecure_channel(args.server))
    flagged = 0
    for start in range(0, len(files), args.batch_size):
        batch = files[start : start + args.batch_size]
        request = pb.ScreenRequest(
            images=pb.Images(encoded=pb.EncodedImages(files=[p.read_bytes() for p in batch])),
            ids=[str(p) for p in batch],
        )
        try:
            response = stub.Screen(request, timeout=60)
        except grpc.RpcError as e:
            sys.exit(f"server answered {e.code().name}: {e.details()}")
        for r in response.results:
            flagged += r.flagged
            print(json.dumps({
                "id": r.id,
                "predicted_class": r.predicted_class,
                "predicted_name": r.predicted_name,
                "adversarial_score": r.adversarial_score,
                "flagged": r.flagged,
            }))
    print(f"screened {len(files)} images, {flagged} flagged", file=sys.stderr)
    sys.exit(2 if args.fail_on_flag and flagged else 0)


if __name__ == "__main__":
    main()
