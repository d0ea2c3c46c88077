from calibprompt.cli import main

raise SystemExit(main())
