from cfcli.cli import main

main()
