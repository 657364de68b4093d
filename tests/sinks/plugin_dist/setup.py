"""A tiny third-party sink distribution, installed by tests/sinks/test_registry.py into a
temporary directory to prove that sinks are found through real entry points."""

from setuptools import setup

setup(
    name="timelapser-echo-sink",
    version="0.1",
    py_modules=["tl_echo_sink"],
    entry_points={
        "timelapser_workers.sinks": [
            "echo = tl_echo_sink:EchoSink",
            # Broken on purpose: the module does not exist. Must not break the other sinks.
            "broken = tl_echo_sink_missing:Nope",
            # Clashes with the built-in `memory` sink: must be reported, not shadowed.
            "memory = tl_echo_sink:EchoSink",
        ]
    },
)
