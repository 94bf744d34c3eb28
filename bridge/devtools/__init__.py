"""Tools for developing the bridge: make run, the Apizee simulator, dev brokers and registry.

Neither the service nor the operator commands import them (make lint checks it).
"""
