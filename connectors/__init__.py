"""Protocol connectors: one sub-package per protocol, plus the shared contract and registry."""
