"""Protocol registry: the one place that maps a device's ``protocol`` to its connector class.

Adding a protocol = one entry in `_FACTORIES` (DESIGN.md §1). A protocol's module is imported
only when a device uses it, so a gateway without OPC UA devices never imports asyncua.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from connectors.base import Connector
from connectors.modbus.config import ModbusDeviceConfig
from connectors.modbus.plan import ModbusPoint
from connectors.mqtt.config import MqttDeviceConfig
from connectors.opcua.config import OpcUaDeviceConfig

if TYPE_CHECKING:
    from connectors.mqtt.connector import MqttPoint
    from connectors.opcua.connector import OpcUaPoint

DeviceConfig = ModbusDeviceConfig | OpcUaDeviceConfig | MqttDeviceConfig
"""Union of the device config models."""

PointSpec = "ModbusPoint | OpcUaPoint | MqttPoint"
"""Union of the per-protocol point descriptions a connector acquires (documentation alias)."""

ConnectorFactory = Callable[..., Connector]
"""``factory(device_config, points, **options) -> Connector`` (a connector class)."""


def _modbus() -> ConnectorFactory:
    from connectors.modbus.connector import ModbusConnector  # lazy: imports pymodbus

    return ModbusConnector


def _opcua() -> ConnectorFactory:
    from connectors.opcua.connector import OpcUaConnector  # lazy: imports asyncua

    return OpcUaConnector


def _mqtt() -> ConnectorFactory:
    from connectors.mqtt.connector import MqttConnector  # lazy: imports aiomqtt

    return MqttConnector


_FACTORIES: dict[str, Callable[[], ConnectorFactory]] = {
    "modbus": _modbus,
    "opcua": _opcua,
    "mqtt": _mqtt,
}
"""protocol -> loader of its connector class."""


def protocols() -> list[str]:
    """The protocol names `create_connector` accepts, sorted."""
    return sorted(_FACTORIES)


def create_connector(
    device_config: DeviceConfig,
    points: Sequence[ModbusPoint | OpcUaPoint | MqttPoint],
    **options: object,
) -> Connector:
    """Build the connector of a device.

    Args:
        device_config: The device; its ``protocol`` selects the connector.
        points: The device's points, of the protocol's point type (`ModbusPoint`,
            `OpcUaPoint`, `MqttPoint`), keys ``site/asset/point``.
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
