"""The worker protocol: job files in (schema.py, fields.py, cli_args.py), JSON-lines events out
(event_schema.py, events.py), exit codes and cancellation (runner.py, cancel.py).

Light on purpose (no torch import): the Slicer modules import it to write jobs and parse events. This
file imports nothing, so that a lower layer reading one module here (the training loop reporting
events, an adapter config checking a field) does not load the job classes with it.
"""
