from papertune.cli import main

raise SystemExit(main())
