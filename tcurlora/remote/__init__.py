"""Run a finetune or segment job on another machine over SSH, as if it ran here.

One OpenSSH connection (ControlMaster, multiplexed) carries everything: the job's inputs are staged
into a per-run folder on the host (tar over the connection), the paths in the job are rewritten to that
folder, the remote `tcurlora finetune|segment --job job.json --events` runs under a shell that records its PID,
its events are re-emitted here with the remote paths turned into local ones, the outputs come back
and the remote folder is removed. Cancel (SIGTERM/SIGINT here) sends SIGTERM to the remote PID over a
second channel, brings the last checkpoint back and cleans up, so the run can be resumed here.

Modules: host.py (where to run, its errors), ssh.py (the connection and the commands run over it,
quoting), transfer.py (staging the inputs, bringing the outputs back), run.py (the remote run, its events and
cancel), cli.py (`--remote` and its companions).

Security: host keys are verified by ssh as configured (known_hosts; never turned off here) and
`BatchMode=yes` means ssh never asks for or stores a password: key-based login only.
"""
