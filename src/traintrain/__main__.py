from traintrain.cli import main

raise SystemExit(main())
