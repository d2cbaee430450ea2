"""UMTCDS core library: every step of the campus Q&A pipeline, usable without the dashboard.

``docs/ARCHITECTURE.md`` lists the modules (one job each), the data flow between the project's files, and where each
kind of change goes. The dashboard's pages and the ``umtcds`` CLI are thin layers over the functions here.
"""

__version__ = "0.1.0"
