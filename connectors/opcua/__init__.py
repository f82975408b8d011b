"""OPC UA connector: config, codec (pure DataValue decoding), connector (I/O), browse, certs.

Import the modules directly: ``connectors.opcua.config`` imports only pydantic, the others pull
in asyncua (and ``certs`` the ``cryptography`` package). See README.md in this folder for
options, quality codes, security setup and troubleshooting.
"""
