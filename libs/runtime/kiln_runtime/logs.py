import logging
import sys


def configure_logging(service: str, level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stdout,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # aiokafka logs every coordinator hiccup at ERROR during a broker restart; keep WARNING+.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # httpx logs every request at INFO: a line per webhook costs more than sending it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
