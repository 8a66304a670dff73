"""An operator's own Triton server for the e2e tests: PyTriton serving one small model that
knows nothing of Kiln, ``posterize`` (Acme's "poster look": each colour channel reduced to
LEVELS levels).

    python tests/e2e/operator_triton.py --grpc-port P --http-port P --metrics-port P

Tensors (Triton's own conventions, no Kiln JSON): IMAGE UINT8 (-1, -1, 3), LEVELS INT32 (1,),
out POSTER UINT8 (-1, -1, 3); max_batch_size 4 with a dynamic batcher that waits up to 50 ms
to group requests of the same shape. Kiln reaches it through a catalog entry alone
(tests/e2e/conftest.py writes it; docs/models.md walks through the same file).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType
from typing import Any

import numpy as np

LOGGER = logging.getLogger("operator-triton")


def posterize(image: np.ndarray[Any, Any], levels: int) -> np.ndarray[Any, Any]:
    levels = max(2, min(int(levels), 32))
    step = 255.0 / (levels - 1)
    result: np.ndarray[Any, Any] = (np.round(image / step) * step).astype(np.uint8)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s")

    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    @batch  # type: ignore[misc]
    def infer(IMAGE: np.ndarray[Any, Any], LEVELS: np.ndarray[Any, Any]) -> dict[str, Any]:
        LOGGER.info("posterize batch=%d shape=%s", IMAGE.shape[0], list(IMAGE.shape[1:]))
        out = np.stack([posterize(IMAGE[i], int(LEVELS[i, 0])) for i in range(IMAGE.shape[0])])
        return {"POSTER": out}

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="posterize",
            infer_func=infer,
            inputs=[
                Tensor(name="IMAGE", dtype=np.uint8, shape=(-1, -1, 3)),
                Tensor(name="LEVELS", dtype=np.int32, shape=(1,)),
            ],
            outputs=[Tensor(name="POSTER", dtype=np.uint8, shape=(-1, -1, 3))],
            config=ModelConfig(
                max_batch_size=4, batcher=DynamicBatcher(max_queue_delay_microseconds=50_000)
            ),
            strict=True,
        )
        LOGGER.info("operator Triton ready on grpc port %d", args.grpc_port)
        triton.serve()


if __name__ == "__main__":
    main()
