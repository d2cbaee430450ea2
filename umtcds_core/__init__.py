"""UMTCDS core library: every step of the campus Q&A pipeline, usable without the dashboard.

Modules are flat and each does one job (see ../DESIGN.md): ``fileio`` (atomic UTF-8/JSONL files), ``workspace``
(project layout and step status), ``models`` (model references → tokenizer + model), ``jobs`` (background
subprocesses), ``progress`` (tqdm + a progress file the dashboard reads), ``secrets`` (API keys), ``cli``.
"""

__version__ = "0.1.0"
