"""Protocol registry: the one place that maps a device's ``protocol`` to its connector class.

Adding a protocol = one entry in `_FACTORIES` (DESIGN.md §1). A protocol's module is imported
only when a device uses it, so a gateway without OPC UA devices never imports asyncua.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from connectors.base import Connector
from connectors.modbus.config import ModbusDeviceConfig
from connectors.modbus.plan import ModbusPoint

DeviceConfig = ModbusDeviceConfig
"""Union of the device config models (OPC UA and MQTT join later)."""

PointSpec = ModbusPoint
"""Union of the per-protocol point descriptions a connector polls."""

ConnectorFactory = Callable[..., Connector]
"""``factory(device_config, points, **options) -> Connector`` (a connector class)."""


def _modbus() -> ConnectorFactory:
    from connectors.modbus.connector import ModbusConnector  # lazy: imports pymodbus

    return ModbusConnector


_FACTORIES: dict[str, Callable[[], ConnectorFactory]] = {
    "modbus": _modbus,
}
"""protocol -> loader of its connector class."""


def protocols() -> list[str]:
    """The protocol names `create_connector` accepts, sorted."""
    return sorted(_FACTORIES)


def create_connector(
    device_config: DeviceConfig, points: Sequence[PointSpec], **options: object
) -> Connector:
    """Build the connector of a device.

    Args:
        device_config: The device; its ``protocol`` selects the connector.
        points: The device's points (for Modbus: `ModbusPoint`, key ``site/asset/point``).
        **options: Keyword options of the connector class (e.g. ``clock=``).

    Returns:
        An unopened connector: ``async with`` it to connect.

    Raises:
        ValueError: No connector for the device's protocol.
    """
    loader = _FACTORIES.get(device_config.protocol)
    if loader is None:
        msg = f"no connector for protocol {device_config.protocol!r}; known: {protocols()}"
        raise ValueError(msg)
    return loader()(device_config, points, **options)
