"""Kiln's local stack as a package, one module per concern; deploy/local/stack.py is its command.

ports.py        the TCP ports (StackPorts, KILN_<FIELD>_PORT), free ports
components.py   the component names (kafka, triton, the services) and service instances
envfiles.py     KEY=value files (secrets.env, demo.env)
layout.py       where a stack keeps everything, its settings and addresses
processes.py    spawn, pidfiles, process groups, stop
install.py      Debian packages and the Kafka jars
kafka.py        the broker and its topics
postgres.py     PostgreSQL (PostgresServer), for a stack whose database is "postgresql"
secrets.py      the admin token, signing keys and database password (secrets.env)
triton.py       the model host (services/modelhost) as the `triton` component
services.py     the services' instances, environment, start, stop, readiness
demo.py         the demo account of `make up`
local_stack.py  LocalStack: the parts together, up, down, status, scale
cli.py          the command line
"""

from kiln_stack.components import (
    KAFKA,
    POSTGRES,
    SERVICES,
    TRITON,
    instance_counts,
    instance_name,
    parse_instances,
    split_instance,
)
from kiln_stack.demo import DEMO_CREDITS, DEMO_EMAIL, DEMO_NAME
from kiln_stack.envfiles import read_env_file, write_env_file
from kiln_stack.errors import StackError
from kiln_stack.install import (
    APT_PACKAGES_FILE,
    KAFKA_JAR_GLOB,
    POM_FILE,
    apt_packages,
    dpkg_installed,
)
from kiln_stack.kafka import (
    KAFKA_JVM_OPTS,
    KAFKA_LOG4J_TEMPLATE,
    KAFKA_PROPERTIES_TEMPLATE,
    KAFKA_START_TIMEOUT_S,
    TOPICS_TIMEOUT_S,
    render_template,
)
from kiln_stack.layout import DATABASES, DEFAULT_SANDBOX_DELAY_MS, HERE, REPO
from kiln_stack.local_stack import ComponentStatus, LocalStack
from kiln_stack.ports import StackPorts, free_port, port_accepts
from kiln_stack.postgres import PostgresServer, find_pg_bin
from kiln_stack.processes import LOG_TAIL_LINES, STOP_GRACE_S, group_members, tail
from kiln_stack.secrets import SECRET_NAMES
from kiln_stack.services import SERVICES_READY_TIMEOUT_S
from kiln_stack.triton import TRITON_START_TIMEOUT_S

__all__ = [
    "APT_PACKAGES_FILE",
    "DATABASES",
    "DEFAULT_SANDBOX_DELAY_MS",
    "DEMO_CREDITS",
    "DEMO_EMAIL",
    "DEMO_NAME",
    "HERE",
    "KAFKA",
    "KAFKA_JAR_GLOB",
    "KAFKA_JVM_OPTS",
    "KAFKA_LOG4J_TEMPLATE",
    "KAFKA_PROPERTIES_TEMPLATE",
    "KAFKA_START_TIMEOUT_S",
    "LOG_TAIL_LINES",
    "POM_FILE",
    "POSTGRES",
    "REPO",
    "SECRET_NAMES",
    "SERVICES",
    "SERVICES_READY_TIMEOUT_S",
    "STOP_GRACE_S",
    "TOPICS_TIMEOUT_S",
    "TRITON",
    "TRITON_START_TIMEOUT_S",
    "ComponentStatus",
    "LocalStack",
    "PostgresServer",
    "StackError",
    "StackPorts",
    "apt_packages",
    "dpkg_installed",
    "find_pg_bin",
    "free_port",
    "group_members",
    "instance_counts",
    "instance_name",
    "parse_instances",
    "port_accepts",
    "read_env_file",
    "render_template",
    "split_instance",
    "tail",
    "write_env_file",
]
