"""Sub-commands of the `tcurlora` CLI, one module each."""
