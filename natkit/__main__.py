from natkit.cli import main

main()
