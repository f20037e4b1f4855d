"""Front-end worker processes over one inference process (``tta-serve --workers N``)."""
