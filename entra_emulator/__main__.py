from entra_emulator.cli import main

raise SystemExit(main())
