from hybridc.cli import main

main()
