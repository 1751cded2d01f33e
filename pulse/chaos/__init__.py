"""The fault campaign (`pulse chaos`): faults, bad input and scale-out on real parts.

``lab`` starts and stops the real components (brokers, `pulse stream` processes, the
producer) and reads what the stream wrote; ``cases`` holds one module per case;
``campaign`` runs the selected cases and prints one table.
"""
