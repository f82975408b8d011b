"""MQTT: input connector, payload decoders (plain, JSON, Sparkplug B) and northbound publisher.

See ``README.md`` in this folder.
"""
