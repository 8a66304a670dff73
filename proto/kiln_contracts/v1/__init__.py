"""Generated code of the `kiln.events.v1` protobuf package (see proto/generate.py; do not edit
the `*_pb2.py` / `*_pb2.pyi` files by hand)."""
