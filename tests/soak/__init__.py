"""The reliability suite (``make soak``, docs/RELIABILITY.md); a package so that its modules
(``conftest`` above all) never shadow the main suite's modules of the same name."""
