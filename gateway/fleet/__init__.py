"""The fleet view: one API and page over many site gateways, fed by their MQTT state (issue #9).

`ot-gateway fleet -c fleet.yaml` (or ``python -m gateway.fleet -c fleet.yaml``) subscribes to
the broker where the gateways publish their northbound state (`gateway.northbound`) and serves
``/api/v1/gateways``, ``/api/v1/sites``, ``/api/v1/assets``, ``/api/v1/gaps`` and a page at
``/``. See docs/scaling.md.
"""
