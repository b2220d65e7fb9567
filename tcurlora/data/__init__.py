"""Data: cases (cases.py), file I/O with exact geometry (io.py), checks (validate.py),
MONAI transforms (transforms.py) and cached training batches (loader.py).

Only the light case helpers are imported here; import the MONAI-based modules directly.
"""

from tcurlora.data.cases import Case, cases_from_decathlon, cases_from_list, dataset_label_names

__all__ = ["Case", "cases_from_decathlon", "cases_from_list", "dataset_label_names"]
