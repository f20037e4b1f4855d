"""One tta-serve process: its core settings from flags (``core_options``) or environment
(``serve_env``), and the runner that starts the front ends over one core and stops them."""
