from mailfleet.cli import main

main()
