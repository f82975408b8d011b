"""Modbus TCP connector: config, codec (pure decode/encode), plan (coalescing), connector (I/O).

Import the modules directly (``connectors.modbus.connector`` pulls in pymodbus; the others do
not). See README.md in this folder for options, quality codes and troubleshooting.
"""
