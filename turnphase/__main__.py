"""`python -m turnphase ...`, as launchers start it: `torchrun --nproc-per-node 2 -m turnphase build ...`."""

from turnphase.builders.cli import main

raise SystemExit(main())
