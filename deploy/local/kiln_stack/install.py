"""What the stack needs on the machine: Debian packages (apt-packages.txt) and the Kafka
jars (Maven Central, pom.xml)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from kiln_stack.errors import StackError
from kiln_stack.layout import HERE, StackLayout
from kiln_stack.processes import LOG_TAIL_LINES

APT_PACKAGES_FILE = HERE / "apt-packages.txt"
POM_FILE = HERE / "pom.xml"
KAFKA_JAR_GLOB = "kafka_2.13-*.jar"


def apt_packages(path: Path = APT_PACKAGES_FILE) -> list[str]:
    """Package names of apt-packages.txt: whitespace-separated, `#` starts a comment."""
    if not path.exists():
        return []
    names: list[str] = []
    for line in path.read_text().splitlines():
        names += line.split("#", 1)[0].split()
    return names


def dpkg_installed(package: str) -> bool:
    result = subprocess.run(["dpkg", "-s", package], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return False
    status = re.search(r"^Status:\s*(.*)$", result.stdout, re.MULTILINE)
    return status is not None and status.group(1).split()[-1:] == ["installed"]


class InstallMixin(StackLayout):
    """What `install` adds when it is missing: the Debian packages, the Kafka jars."""

    def install(self) -> list[str]:
        """Install what is missing: the Debian packages, then the Kafka jars; returns what it
        installed (empty when nothing was missing)."""
        return self._install_apt_packages() + self._install_kafka_jars()

    def _install_apt_packages(self) -> list[str]:
        if not APT_PACKAGES_FILE.exists():
            self._echo(f"warning: {APT_PACKAGES_FILE} is missing: no Debian package is checked")
            return []
        wanted = apt_packages()
        if not wanted:
            return []
        if shutil.which("dpkg") is None:
            self._echo(f"not a Debian system: make sure these are installed: {' '.join(wanted)}")
            return []
        missing = [name for name in wanted if not dpkg_installed(name)]
        if not missing:
            return []
        if os.geteuid() != 0:
            raise StackError(
                f"missing Debian packages: {' '.join(missing)}; install them as root: "
                f"apt-get install -y {' '.join(missing)}"
            )
        self._echo(f"installing Debian packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
                raise StackError(f"{' '.join(argv)} failed:\n{output}")
        return missing

    def kafka_jars_present(self) -> bool:
        return any(self.kafka_libs.glob(KAFKA_JAR_GLOB))

    def _install_kafka_jars(self) -> list[str]:
        if self.kafka_jars_present():
            return []
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("mvn is missing (it is in deploy/local/apt-packages.txt: run install)")
        self._echo(f"fetching the Kafka jars into {self.kafka_libs} (Maven Central)")
        self.kafka_libs.mkdir(parents=True, exist_ok=True)
        argv = [
            mvn, "-q", "-B", "-f", str(POM_FILE),
            "dependency:copy-dependencies", f"-DoutputDirectory={self.kafka_libs}",
        ]  # fmt: skip
        result = subprocess.run(argv, cwd=self.repo, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not self.kafka_jars_present():
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            raise StackError(f"fetching the Kafka jars failed:\n{output}")
        return [f"Kafka jars ({self.kafka_libs})"]
