"""Field-device simulator: Modbus TCP devices from a YAML profile, faults and ground truth."""
